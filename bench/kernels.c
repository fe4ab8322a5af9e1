/* `dsr1-bench kernels`: how close the CPU kernels come to this machine's limits.
 *
 * Everything in one run, so that every ratio compares numbers taken minutes apart on the
 * same (often shared, noisy) machine, each the best of several repetitions:
 *   1. the limits (bench/limits.c): streaming read bandwidth and fp32 FMA peak, measured
 *      before and again after the kernels; the larger of the two measurements is used, and
 *      a large disagreement is reported (the machine was busy at one of the two times);
 *   2. the FP8 linear layer at DeepSeek-R1 expert shapes (N x K = 2048 x 7168, gate/up, and
 *      7168 x 2048, down) for M = 1, 8, 64, 512 (and 4096 without --quick), for every kernel
 *      variant available, variants interleaved per repetition: GFLOP/s, weight GB/s, % of
 *      bandwidth, % of FMA peak, % of the roofline min(peak, bandwidth x 2M flops per
 *      weight byte), speed-up over portable, and the largest difference from portable;
 *   3. the decode-step absorption (q' = Wk^T q over kv_b, FP8) and MLA attention of one
 *      token against 1K-16K cached rows (1K and 4K with --quick), per variant.
 * Weights are random e4m3 bytes (no NaN patterns) with random positive block scales; many
 * copies are cycled so that, as with real experts, they come from DRAM rather than cache.
 * usage: dsr1-bench kernels [--quick] [--json FILE] */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "kernels.h"
#include "progress.h"

#define MAX_VARIANTS 8
#define MAX_ROWS     128

typedef struct {
    bool quick;
    int reps;          /* repetitions per measurement (best kept) */
    double min_time;   /* seconds per repetition, at least one call */
    double budget;     /* seconds per measurement before repetitions are cut */
    size_t pool_bytes; /* weight copies cycled per shape */
} bench_opts;

/* One measured kernel call: a linear at (n, k, m) or a decode kernel (m = 0) at ctx. */
typedef struct {
    const char *kernel; /* "linear_fp8", "absorb", "mla_attention" */
    int n, k, m, ctx;
    const char *variant;
    double sec, bytes, flops, speedup, diff; /* diff: NaN when not checked */
} result;

typedef struct {
    result r[MAX_ROWS];
    int n;
} results;

static result *results_add(results *rs)
{
    return rs->n < MAX_ROWS ? &rs->r[rs->n++] : NULL;
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static float frand(uint64_t *s) /* uniform in [-1, 1) */
{
    return (float)((xorshift(s) >> 11) * 0x1p-52 - 1.0);
}

static uint8_t e4m3_rand(uint64_t *s) /* any e4m3 byte but the NaN patterns */
{
    const uint8_t v = (uint8_t)xorshift(s);
    return (v & 0x7f) == 0x7f ? v ^ 1 : v;
}

/* ---- FP8 linear at expert shapes -------------------------------------------------- */

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
        p->scale[i] = (float)((0.25 + (xorshift(&s) >> 11) * 0x1p-53) * 1e-3); /* > 0 */
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

/* One repetition: calls cycling through the copies for at least min_time; s per call. */
static double time_rep(const dsr1_kernels *k, dsr1_pool *pool, const weight_pool *wp, int *next,
                       const float *x, int m, float *y, double min_time)
{
    const int n = wp->w[0].rows, kk = wp->w[0].cols;
    int calls = 0;
    const double t0 = dsr1_now();
    double t;
    do {
        k->linear(pool, &wp->w[*next], 0, n, x, kk, m, y, n);
        *next = (*next + 1) % wp->ncopies;
        calls++;
    } while ((t = dsr1_now() - t0) < min_time);
    return t / calls;
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

static void bench_linear(dsr1_pool *pool, const bench_opts *o, int n, int k, const int *ms, int nm,
                         const dsr1_kernels **vars, int nv, results *rs)
{
    weight_pool wp;
    const int mmax = ms[nm - 1];
    float *x = malloc(sizeof(float) * mmax * k), *y = malloc(sizeof(float) * mmax * n);
    float *yref = malloc(sizeof(float) * mmax * n), *yv = malloc(sizeof(float) * mmax * n);
    if (weight_pool_make(&wp, n, k, o->pool_bytes, 0x9e3779b97f4a7c15ull ^ (uint64_t)n) != 0 ||
        !x || !y || !yref || !yv) {
        fprintf(stderr, "dsr1-bench: out of memory for %d x %d, M = %d\n", n, k, mmax);
        goto out;
    }
    uint64_t s = 12345;
    for (size_t i = 0; i < (size_t)mmax * k; i++) x[i] = frand(&s);
    memset(y, 0, sizeof(float) * mmax * n);
    const double wbytes =
        (double)n * k + sizeof(float) * (double)((n + 127) / 128) * ((k + 127) / 128);
    for (int mi = 0; mi < nm; mi++) {
        const int m = ms[mi];
        fprintf(stderr, "linear %d x %d, M = %d ...\n", n, k, m);
        double sec[MAX_VARIANTS], diff[MAX_VARIANTS];
        int next[MAX_VARIANTS];
        /* the reference result on copy 0 (also the warm-up); compared when it was cheap */
        const double t0 = dsr1_now();
        vars[0]->linear(pool, &wp.w[0], 0, n, x, k, m, yref, n);
        const bool check = dsr1_now() - t0 < 2.0;
        for (int v = 0; v < nv; v++) {
            sec[v] = INFINITY;
            diff[v] = NAN;
            next[v] = 1;
            if (v > 0 && check) {
                vars[v]->linear(pool, &wp.w[0], 0, n, x, k, m, yv, n);
                diff[v] = max_rel_diff(yv, yref, (size_t)m * n);
            }
        }
        /* variants interleaved per repetition, so that drift on a shared machine hits all */
        const double start = dsr1_now();
        for (int rep = 0; rep < o->reps && dsr1_now() - start < o->budget; rep++)
            for (int v = 0; v < nv; v++)
                sec[v] = fmin(sec[v], time_rep(vars[v], pool, &wp, &next[v], x, m, y, o->min_time));
        for (int v = 0; v < nv; v++) {
            result *r = results_add(rs);
            if (r)
                *r = (result){"linear_fp8",
                              n,
                              k,
                              m,
                              0,
                              vars[v]->name,
                              sec[v],
                              wbytes,
                              2.0 * m * n * k,
                              sec[0] / sec[v],
                              diff[v]};
        }
    }
out:
    free(x);
    free(y);
    free(yref);
    free(yv);
    weight_pool_free(&wp);
}

/* ---- decode-step attention and absorption ----------------------------------------- */

typedef struct {
    const dsr1_kernels *k;
    dsr1_pool *pool;
    const dsr1_linear *w;
    const float *x, *qa, *qp, *kv;
    float *y;
    int ctx;
} misc_job;

/* q' = Wk^T q for all 128 heads of one token (kv_b: 128 x (128 nope + 128 v) rows of 512) */
static void run_absorb(const misc_job *j)
{
    for (int h = 0; h < 128; h++)
        j->k->linear_t(j->pool, j->w, h * 256, h * 256 + 128, j->x + h * 128, 128 * 128, 1,
                       j->y + h * 512, 512);
}

static void run_attention(const misc_job *j)
{
    j->k->mla_attention(j->pool, 1, 128, 512, 64, j->qa, j->qp, j->kv, 576, j->ctx - 1, 0.1f, j->y);
}

static double best_of(void (*fn)(const misc_job *), const misc_job *j, const bench_opts *o)
{
    double best = INFINITY;
    const double start = dsr1_now();
    for (int rep = 0; rep < o->reps * 3 && dsr1_now() - start < o->budget / 2; rep++) {
        const double t0 = dsr1_now();
        fn(j);
        best = fmin(best, dsr1_now() - t0);
    }
    return best;
}

/* At R1 shapes: 128 heads, kv_lora 512, rope 64, one token. */
static void bench_decode_kernels(dsr1_pool *pool, const bench_opts *o, const dsr1_kernels **vars,
                                 int nv, results *rs)
{
    const int rows = 128 * 256, cols = 512, ctx_max = o->quick ? 4096 : 16384;
    uint8_t *q = malloc((size_t)rows * cols);
    float *sc = malloc(sizeof(float) * (rows / 128) * (cols / 128));
    float *x = malloc(sizeof(float) * 128 * 128), *y = malloc(sizeof(float) * 128 * 512);
    float *qa = malloc(sizeof(float) * 128 * 512), *qp = malloc(sizeof(float) * 128 * 64);
    float *kv = malloc(sizeof(float) * (size_t)ctx_max * 576);
    if (!q || !sc || !x || !y || !qa || !qp || !kv) {
        fprintf(stderr, "dsr1-bench: out of memory for the decode kernels\n");
        goto out;
    }
    uint64_t s = 777;
    for (size_t i = 0; i < (size_t)rows * cols; i++) q[i] = e4m3_rand(&s);
    for (int i = 0; i < (rows / 128) * (cols / 128); i++)
        sc[i] = (float)((0.25 + (xorshift(&s) >> 11) * 0x1p-53) * 1e-3);
    for (int i = 0; i < 128 * 128; i++) x[i] = frand(&s);
    for (int i = 0; i < 128 * 512; i++) qa[i] = frand(&s);
    for (int i = 0; i < 128 * 64; i++) qp[i] = frand(&s);
    for (size_t i = 0; i < (size_t)ctx_max * 576; i++) kv[i] = frand(&s);
    const dsr1_linear w = {DSR1_DT_F8_E4M3, rows, cols, q, sc};
    fprintf(stderr, "decode-step kernels ...\n");
    double base = 0;
    for (int v = 0; v < nv; v++) {
        const misc_job j = {vars[v], pool, &w, x, qa, qp, kv, y, 0};
        const double t = best_of(run_absorb, &j, o);
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
    }
    for (int ctx = 1024; ctx <= ctx_max; ctx *= 4)
        for (int v = 0; v < nv; v++) {
            const misc_job j = {vars[v], pool, &w, x, qa, qp, kv, y, ctx};
            const double t = best_of(run_attention, &j, o);
            base = v == 0 ? t : base;
            result *r = results_add(rs);
            if (r)
                *r = (result){"mla_attention",
                              0,
                              0,
                              1,
                              ctx,
                              vars[v]->name,
                              t,
                              (double)ctx * 576 * sizeof(float),
                              128.0 * ctx * (576 + 512) * 2,
                              base / t,
                              NAN};
        }
out:
    free(q);
    free(sc);
    free(x);
    free(y);
    free(qa);
    free(qp);
    free(kv);
}

/* ---- report ------------------------------------------------------------------------ */

static void report(const results *rs, double bw, double peak, json_t *jres)
{
    printf("\nFP8 e4m3 linear y = x W^T, W: N x K with 128x128 block scales, x: M x K fp32\n");
    printf("%5s %5s %5s  %-9s %10s %9s %8s %7s %7s %7s %8s  %s\n", "N", "K", "M", "variant",
           "ms/call", "GFLOP/s", "W GB/s", "%BW", "%FMA", "%roof", "speedup", "max|diff|/max|y|");
    bool header2 = false;
    for (int i = 0; i < rs->n; i++) {
        const result *r = &rs->r[i];
        const double gf = r->flops / r->sec / 1e9, gb = r->bytes / r->sec / 1e9;
        const double pf = peak > 0 ? 100 * gf / peak : 0;
        json_t *e =
            json_pack("{s:s,s:s,s:f,s:f,s:f,s:f,s:f,s:f}", "kernel", r->kernel, "variant",
                      r->variant, "seconds", r->sec, "gflops", gf, "gbps", gb, "pct_bandwidth",
                      100 * gb / bw, "pct_fma_peak", pf, "speedup_vs_portable", r->speedup);
        if (!strcmp(r->kernel, "linear_fp8")) {
            const double roof = fmin(peak > 0 ? peak : INFINITY, bw * 2.0 * r->m);
            char d[32] = "(reference)";
            if (!isnan(r->diff))
                snprintf(d, sizeof(d), "%.1e", r->diff);
            else if (r->speedup != 1.0 || strcmp(r->variant, "portable"))
                strcpy(d, "-");
            printf("%5d %5d %5d  %-9s %10.3f %9.1f %8.2f %6.1f%% %6.1f%% %6.1f%% %7.2fx  %s\n",
                   r->n, r->k, r->m, r->variant, r->sec * 1e3, gf, gb, 100 * gb / bw, pf,
                   100 * gf / roof, r->speedup, d);
            json_object_set_new(e, "pct_roofline", json_real(100 * gf / roof));
            if (!isnan(r->diff))
                json_object_set_new(e, "max_rel_diff_vs_portable", json_real(r->diff));
        } else {
            if (!header2) {
                printf("\ndecode-step kernels at R1 shapes (128 heads, kv_lora 512, rope 64), one "
                       "token; GB/s: weights read (absorb) or cache rows read (attention)\n");
                printf("%-35s %-9s %10s %9s %8s %7s %7s %8s\n", "kernel", "variant", "ms/call",
                       "GFLOP/s", "GB/s", "%BW", "%FMA", "speedup");
                header2 = true;
            }
            char name[64];
            if (r->ctx)
                snprintf(name, sizeof(name), "MLA attention, %d cached tokens", r->ctx);
            else
                snprintf(name, sizeof(name), "absorb q' = Wk^T q (kv_b, FP8)");
            printf("%-35s %-9s %10.3f %9.1f %8.2f %6.1f%% %6.1f%% %7.2fx\n", name, r->variant,
                   r->sec * 1e3, gf, gb, 100 * gb / bw, pf, r->speedup);
        }
        json_object_set_new(e, "n", json_integer(r->n));
        json_object_set_new(e, "k", json_integer(r->k));
        json_object_set_new(e, "m", json_integer(r->m));
        if (r->ctx) json_object_set_new(e, "ctx", json_integer(r->ctx));
        json_array_append_new(jres, e);
    }
}

static void usage(FILE *f)
{
    fprintf(f, "usage: dsr1-bench kernels [--quick] [--json FILE]\n"
               "  --quick      smaller buffers, fewer repetitions, no M = 4096 (about a minute)\n"
               "  --json FILE  also write the results as JSON\n"
               "environment: DSR1_THREADS=N threads (default: all cores)\n");
}

int dsr1__bench_kernels(int argc, char **argv)
{
    static const struct option opts[] = {{"quick", no_argument, 0, 'q'},
                                         {"json", required_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    bench_opts o = {false, 5, 0.25, 10.0, (size_t)512 << 20};
    const char *json_path = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "qj:h", opts, NULL)) != -1) {
        switch (c) {
        case 'q':
            o = (bench_opts){true, 3, 0.15, 3.0, (size_t)192 << 20};
            break;
        case 'j':
            json_path = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "dsr1-bench kernels: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    dsr1_pool *pool;
    if (dsr1_pool_create(0, &pool) != DSR1_OK) {
        fprintf(stderr, "dsr1-bench: %s\n", dsr1_errmsg());
        return 1;
    }
    const dsr1_kernels *vars[MAX_VARIANTS];
    int nv = 0;
    vars[nv++] = dsr1_kernels_portable();
    static const char *const names[] = {"avx512"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const dsr1_kernels *k = dsr1_kernels_select(names[i]);
        if (k) vars[nv++] = k;
    }
    const size_t bw_bytes = o.quick ? (size_t)512 << 20 : (size_t)1 << 30;
    const int passes = o.quick ? 10 : 20;
    fprintf(stderr, "machine limits ...\n");
    const double bw0 = dsr1__bench_read_gbps(pool, bw_bytes, passes / 2);
    const double peak0 = dsr1__bench_fma_gflops(pool, passes);

    results *rs = calloc(1, sizeof(*rs));
    if (!rs) {
        dsr1_pool_destroy(pool);
        return 1;
    }
    static const int ms_quick[] = {1, 8, 64, 512}, ms_full[] = {1, 8, 64, 512, 4096};
    const int *ms = o.quick ? ms_quick : ms_full, nm = o.quick ? 4 : 5;
    bench_linear(pool, &o, 2048, 7168, ms, nm, vars, nv, rs);
    bench_linear(pool, &o, 7168, 2048, ms, nm, vars, nv, rs);
    bench_decode_kernels(pool, &o, vars, nv, rs);

    fprintf(stderr, "machine limits again ...\n");
    const double bw1 = dsr1__bench_read_gbps(pool, bw_bytes, passes / 2);
    const double peak1 = dsr1__bench_fma_gflops(pool, passes);
    const double bw = fmax(bw0, bw1), peak = fmax(peak0, peak1);
    printf("dsr1-bench kernels%s: %d threads; variants:", o.quick ? " --quick" : "",
           dsr1_pool_size(pool));
    for (int v = 0; v < nv; v++) printf(" %s", vars[v]->name);
    printf("\nstreaming read %.1f GB/s (before %.1f, after %.1f); AVX-512 fp32 FMA peak %s%.1f "
           "GFLOP/s (before %.1f, after %.1f)\n",
           bw, bw0, bw1, peak > 0 ? "" : "(n/a) ", peak, peak0, peak1);
    if (fmin(bw0, bw1) < 0.85 * bw || fmin(peak0, peak1) < 0.85 * peak)
        printf("note: the limits moved by more than 15%% during the run: the machine was busy "
               "(ratios use the larger values)\n");

    json_t *root = json_object(), *jres = json_array();
    report(rs, bw, peak, jres);
    json_object_set_new(root, "threads", json_integer(dsr1_pool_size(pool)));
    json_object_set_new(root, "quick", json_boolean(o.quick));
    json_object_set_new(root, "read_gbps", json_real(bw));
    json_object_set_new(root, "fma_peak_gflops", json_real(peak));
    json_object_set_new(root, "read_gbps_before_after", json_pack("[f,f]", bw0, bw1));
    json_object_set_new(root, "fma_peak_gflops_before_after", json_pack("[f,f]", peak0, peak1));
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
