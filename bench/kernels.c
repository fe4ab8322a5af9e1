/* `dsr1-bench kernels`: how close the CPU kernels come to this machine's limits.
 *
 * In one run, so that every ratio compares numbers taken minutes apart on the same (often
 * shared, noisy) machine, best of several repetitions each:
 *   1. streaming read bandwidth (all pool threads reading a buffer far larger than the
 *      caches) — the limit for decode-shaped products;
 *   2. fp32 FMA peak (register-only AVX-512 FMA chains on all threads) — the limit for
 *      prefill-shaped ones;
 *   3. the FP8 linear layer at DeepSeek-R1 expert shapes (N x K = 2048 x 7168, gate/up, and
 *      7168 x 2048, down) for M = 1, 8, 64, 512 (and 4096 without --quick), for every kernel
 *      variant available: GFLOP/s, weight GB/s, % of bandwidth, % of FMA peak, % of the
 *      roofline min(peak, bandwidth x 2M flops/byte), speed-up over portable, and the
 *      largest difference from the portable result.
 * Weights are random e4m3 bytes with random positive block scales; many copies are cycled
 * so that, as with real experts, they come from DRAM rather than from the last-level cache.
 * usage: dsr1-bench kernels [--quick] [--json FILE] */
#include <getopt.h>
#include <immintrin.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "kernels.h"
#include "progress.h"
#include "threadpool.h"

#define MAX_THREADS 1024

typedef struct {
    bool quick;
    int reps;          /* repetitions per measurement (best kept) */
    double min_time;   /* seconds per repetition, at least one call */
    double budget;     /* seconds per measurement before repetitions are cut */
    size_t pool_bytes; /* weight copies cycled per shape */
} bench_opts;

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* ---- machine limits ------------------------------------------------------------------ */

typedef struct {
    const double *buf;
    long per; /* doubles per item */
    double sums[MAX_THREADS];
} read_job;

static void read_task(void *arg, int begin, int end, int tid)
{
    read_job *j = arg;
    double acc[8] = {0};
    for (long i = (long)begin * j->per; i < (long)end * j->per; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += j->buf[i + l];
    j->sums[tid] += acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
}

static double measure_read_gbps(dsr1_pool *pool, size_t bytes, int passes)
{
    double *buf = malloc(bytes);
    if (!buf) return 0;
    memset(buf, 0x3f, bytes); /* doubles near 0.49: no denormals, no NaN */
    read_job *j = calloc(1, sizeof(*j));
    if (!j) {
        free(buf);
        return 0;
    }
    j->buf = buf;
    j->per = 65536; /* 512 KB items */
    const int items = (int)(bytes / sizeof(double) / j->per);
    double best = 0;
    for (int p = 0; p < passes; p++) {
        const double t0 = dsr1_now();
        dsr1_pool_run(pool, items, 1, read_task, j);
        const double gbps = (double)items * j->per * sizeof(double) / (dsr1_now() - t0) / 1e9;
        best = gbps > best ? gbps : best;
    }
    free(j);
    free(buf);
    return best;
}

typedef struct {
    long iters;
    float sink[MAX_THREADS];
} fma_job;

/* 12 independent FMA chains per thread (latency x throughput of current cores); values
 * converge to 1 and stay normal. 12 * 16 lanes * 2 flops per iteration. */
__attribute__((target("avx512f,fma"))) static void fma_task(void *arg, int begin, int end, int tid)
{
    fma_job *j = arg;
    const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
    __m512 a[12];
    for (int q = 0; q < 12; q++) a[q] = _mm512_set1_ps(1.0f + 0.01f * q);
    for (int it = begin; it < end; it++)
        for (long i = 0; i < j->iters; i++)
            for (int q = 0; q < 12; q++) a[q] = _mm512_fmadd_ps(a[q], m, c);
    __m512 s = a[0];
    for (int q = 1; q < 12; q++) s = _mm512_add_ps(s, a[q]);
    j->sink[tid] += _mm512_reduce_add_ps(s);
}

/* GFLOP/s; 0 when the CPU has no AVX-512. */
static double measure_fma_gflops(dsr1_pool *pool, int passes)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("fma")) return 0;
    fma_job *j = calloc(1, sizeof(*j));
    if (!j) return 0;
    j->iters = 1 << 20;
    const int items = dsr1_pool_size(pool) * 8;
    double best = 0;
    for (int p = 0; p < passes; p++) {
        const double t0 = dsr1_now();
        dsr1_pool_run(pool, items, 1, fma_task, j);
        const double g = (double)items * j->iters * 12 * 32 / (dsr1_now() - t0) / 1e9;
        best = g > best ? g : best;
    }
    free(j);
    return best;
}

/* ---- FP8 linear ---------------------------------------------------------------------- */

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
    for (size_t i = 0; i < wb * p->ncopies; i += 8) {
        uint64_t r = xorshift(&s);
        for (int b = 0; b < 8 && i + b < wb * p->ncopies; b++, r >>= 8) {
            uint8_t v = (uint8_t)r;
            p->q[i + b] = (v & 0x7f) == 0x7f ? v ^ 1 : v; /* no NaN patterns */
        }
    }
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

typedef struct {
    const dsr1_kernels *k;
    double sec; /* best seconds per call */
    double diff;
} var_result;

static double max_rel_diff(const float *a, const float *b, size_t n)
{
    double d = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        mx = fmax(mx, fabs((double)b[i]));
    }
    return mx > 0 ? d / mx : d;
}

static void bench_shape(dsr1_pool *pool, const bench_opts *o, int n, int k, const int *ms, int nm,
                        const dsr1_kernels **vars, int nv, double bw, double peak, json_t *jres)
{
    weight_pool wp;
    if (weight_pool_make(&wp, n, k, o->pool_bytes, 0x9e3779b97f4a7c15ull ^ (uint64_t)n) != 0) {
        fprintf(stderr, "dsr1-bench: out of memory for %d x %d weights\n", n, k);
        weight_pool_free(&wp);
        return;
    }
    const int mmax = ms[nm - 1];
    float *x = malloc(sizeof(float) * mmax * k), *y = malloc(sizeof(float) * mmax * n);
    float *yref = malloc(sizeof(float) * mmax * n), *yv = malloc(sizeof(float) * mmax * n);
    if (!x || !y || !yref || !yv) {
        fprintf(stderr, "dsr1-bench: out of memory for M = %d\n", mmax);
        goto out;
    }
    uint64_t s = 12345;
    for (size_t i = 0; i < (size_t)mmax * k; i++)
        x[i] = (float)((xorshift(&s) >> 11) * 0x1p-52 - 1.0);
    memset(y, 0, sizeof(float) * mmax * n);
    const double wbytes =
        (double)n * k + sizeof(float) * (double)((n + 127) / 128) * ((k + 127) / 128);
    for (int mi = 0; mi < nm; mi++) {
        const int m = ms[mi];
        const double flops = 2.0 * m * n * k;
        var_result r[8];
        int next[8];
        for (int v = 0; v < nv; v++) r[v] = (var_result){vars[v], INFINITY, NAN}, next[v] = 1;
        /* reference result on copy 0 (also the warm-up), when the portable call is cheap */
        const double t0 = dsr1_now();
        vars[0]->linear(pool, &wp.w[0], 0, n, x, k, m, yref, n);
        const bool check = dsr1_now() - t0 < 2.0;
        if (check)
            for (int v = 1; v < nv; v++) {
                vars[v]->linear(pool, &wp.w[0], 0, n, x, k, m, yv, n);
                r[v].diff = max_rel_diff(yv, yref, (size_t)m * n);
            }
        /* variants interleaved per repetition, so that drift on a shared machine hits all */
        const double start = dsr1_now();
        for (int rep = 0; rep < o->reps; rep++) {
            for (int v = 0; v < nv; v++) {
                const double t = time_rep(vars[v], pool, &wp, &next[v], x, m, y, o->min_time);
                r[v].sec = t < r[v].sec ? t : r[v].sec;
            }
            if (dsr1_now() - start > o->budget) break;
        }
        for (int v = 0; v < nv; v++) {
            const double gf = flops / r[v].sec / 1e9, wgb = wbytes / r[v].sec / 1e9;
            const double roof = fmin(peak > 0 ? peak : INFINITY, bw * 2.0 * m);
            const double sp = r[0].sec / r[v].sec;
            printf("%5d %5d %5d  %-9s %10.3f %9.1f %9.2f %6.1f%% %6.1f%% %6.1f%% %7.2fx  %s\n", n,
                   k, m, vars[v]->name, r[v].sec * 1e3, gf, wgb, 100 * wgb / bw,
                   peak > 0 ? 100 * gf / peak : 0.0, 100 * gf / roof, sp,
                   v == 0             ? "(reference)"
                   : isnan(r[v].diff) ? "(not checked)"
                                      : "");
            if (v > 0 && !isnan(r[v].diff))
                printf("%*s max |diff| / max |y| = %.1e\n", 27, "", r[v].diff);
            fflush(stdout);
            json_t *e = json_pack("{s:i,s:i,s:i,s:s,s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "n", n, "k", k,
                                  "m", m, "variant", vars[v]->name, "seconds", r[v].sec, "gflops",
                                  gf, "weight_gbps", wgb, "pct_bandwidth", 100 * wgb / bw,
                                  "pct_fma_peak", peak > 0 ? 100 * gf / peak : 0.0, "pct_roofline",
                                  100 * gf / roof, "speedup_vs_portable", sp);
            if (v > 0 && !isnan(r[v].diff))
                json_object_set_new(e, "max_rel_diff_vs_portable", json_real(r[v].diff));
            json_array_append_new(jres, e);
        }
    }
out:
    free(x);
    free(y);
    free(yref);
    free(yv);
    weight_pool_free(&wp);
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
            o.quick = true;
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
    if (o.quick) o = (bench_opts){true, 3, 0.15, 3.0, (size_t)192 << 20};
    dsr1_pool *pool;
    if (dsr1_pool_create(0, &pool) != DSR1_OK) {
        fprintf(stderr, "dsr1-bench: %s\n", dsr1_errmsg());
        return 1;
    }
    const dsr1_kernels *vars[8];
    int nv = 0;
    vars[nv++] = dsr1_kernels_portable();
    static const char *const names[] = {"avx512"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const dsr1_kernels *k = dsr1_kernels_select(names[i]);
        if (k) vars[nv++] = k;
    }
    const double bw =
        measure_read_gbps(pool, o.quick ? (size_t)512 << 20 : (size_t)1 << 30, o.quick ? 3 : 5);
    const double peak = measure_fma_gflops(pool, o.quick ? 3 : 5);
    printf("dsr1-bench kernels%s: %d threads; streaming read %.1f GB/s; AVX-512 fp32 FMA "
           "peak %s%.1f GFLOP/s; variants:",
           o.quick ? " --quick" : "", dsr1_pool_size(pool), bw, peak > 0 ? "" : "(n/a) ", peak);
    for (int v = 0; v < nv; v++) printf(" %s", vars[v]->name);
    printf("\nFP8 e4m3 linear y = x W^T, W: N x K with 128x128 block scales, x: M x K fp32\n");
    printf("%5s %5s %5s  %-9s %10s %9s %9s %7s %7s %7s %8s\n", "N", "K", "M", "variant", "ms/call",
           "GFLOP/s", "W GB/s", "%BW", "%FMA", "%roof", "speedup");
    json_t *root = json_object(), *jres = json_array();
    json_object_set_new(root, "threads", json_integer(dsr1_pool_size(pool)));
    json_object_set_new(root, "quick", json_boolean(o.quick));
    json_object_set_new(root, "read_gbps", json_real(bw));
    json_object_set_new(root, "fma_peak_gflops", json_real(peak));
    static const int ms_quick[] = {1, 8, 64, 512}, ms_full[] = {1, 8, 64, 512, 4096};
    const int *ms = o.quick ? ms_quick : ms_full, nm = o.quick ? 4 : 5;
    bench_shape(pool, &o, 2048, 7168, ms, nm, vars, nv, bw, peak, jres);
    bench_shape(pool, &o, 7168, 2048, ms, nm, vars, nv, bw, peak, jres);
    json_object_set_new(root, "linear_fp8", jres);
    int rc = 0;
    if (json_path && json_dump_file(root, json_path, JSON_INDENT(2)) != 0) {
        fprintf(stderr, "dsr1-bench: cannot write %s\n", json_path);
        rc = 1;
    }
    json_decref(root);
    dsr1_pool_destroy(pool);
    return rc;
}
