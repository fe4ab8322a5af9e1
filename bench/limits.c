/* This machine's limits, measured rather than looked up, for the benchmarks' ratios, and
 * `dsr1-bench limits`, which prints them: the streaming read bandwidth of all pool threads
 * (the ceiling of decode, which streams the active weights once per token), the fp32 FMA
 * peak (the ceiling of the exact mode's prefill) and the bf16 peaks of the fast mode's two
 * arithmetics, vdpbf16ps here and AMX tiles in limits_amx.c. Each is the best of many
 * short passes, so that a moment of quiet on a shared machine is enough. */
#include <immintrin.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "progress.h"

#define MAX_THREADS 1024

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

double dsr1__bench_read_gbps(dsr1_pool *pool, size_t bytes, int passes)
{
    double *buf = malloc(bytes);
    read_job *j = calloc(1, sizeof(*j));
    if (!buf || !j) {
        free(buf);
        free(j);
        return 0;
    }
    memset(buf, 0x3f, bytes); /* doubles near 0.49: no denormals, no NaN */
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

double dsr1__bench_fma_gflops(dsr1_pool *pool, int passes)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("fma")) return 0;
    fma_job *j = calloc(1, sizeof(*j));
    if (!j) return 0;
    j->iters = 1 << 21; /* ~0.05 s per pass on 2 cores */
    const double best =
        dsr1__bench_best_gflops(pool, passes, fma_task, j, (double)j->iters * 12 * 32);
    free(j);
    return best;
}

double dsr1__bench_best_gflops(dsr1_pool *pool, int passes, dsr1_pool_fn task, void *job,
                               double flops_per_item)
{
    const int items = dsr1_pool_size(pool) * 8;
    double best = 0;
    for (int p = 0; p < passes; p++) {
        const double t0 = dsr1_now();
        dsr1_pool_run(pool, items, 1, task, job);
        const double g = items * flops_per_item / (dsr1_now() - t0) / 1e9;
        best = g > best ? g : best;
    }
    return best;
}

#if DSR1_BENCH_BF16
typedef struct {
    long iters;
    float sink[MAX_THREADS];
} bf16_job;

/* 16 independent VDPBF16PS chains per thread (as the FMA loop, with room for a latency of 8
 * at 2 per cycle); each adds 32 products of two bf16 near 1e-3 to an fp32 sum that stays
 * normal. 16 * 32 products * 2 flops per iteration. */
__attribute__((target("avx512f,avx512bf16"))) static void bf16_task(void *arg, int begin, int end,
                                                                    int tid)
{
    bf16_job *j = arg;
    const __m512 v = _mm512_set1_ps(1e-3f);
    const __m512bh a = _mm512_cvtne2ps_pbh(v, v);
    __m512 c[16];
    for (int q = 0; q < 16; q++) c[q] = _mm512_set1_ps(1.0f + 0.01f * q);
    for (int it = begin; it < end; it++)
        for (long i = 0; i < j->iters; i++)
            for (int q = 0; q < 16; q++) c[q] = _mm512_dpbf16_ps(c[q], a, a);
    __m512 s = c[0];
    for (int q = 1; q < 16; q++) s = _mm512_add_ps(s, c[q]);
    j->sink[tid] += _mm512_reduce_add_ps(s);
}
#endif

double dsr1__bench_bf16_gflops(dsr1_pool *pool, int passes, const char **why)
{
#if DSR1_BENCH_BF16
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bf16")) {
        *why = "this CPU has no AVX512_BF16";
        return 0;
    }
    bf16_job *j = calloc(1, sizeof(*j));
    if (!j) {
        *why = "out of memory";
        return 0;
    }
    j->iters = 1 << 20; /* ~0.05 s per pass on 2 cores */
    const double best =
        dsr1__bench_best_gflops(pool, passes, bf16_task, j, (double)j->iters * 16 * 64);
    free(j);
    return best;
#else
    (void)pool;
    (void)passes;
    *why = "this build's compiler has no -mavx512bf16";
    return 0;
#endif
}

/* ---- `dsr1-bench limits` ------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f, "usage: dsr1-bench limits [--quick] [--json FILE]\n\n"
               "This machine's ceilings on all pool threads, each the best of several short\n"
               "passes: streaming read bandwidth, AVX-512 fp32 FMA peak, AVX512_BF16 vdpbf16ps\n"
               "peak and AMX bf16 (TDPBF16PS, tiles only) peak; GFLOP/s count 2 flops per\n"
               "multiply-add; \"n/a (why)\" where the CPU or this build lacks one.\n\n"
               "  --quick      a 256 MB read buffer and fewer passes (a few seconds)\n"
               "  --json FILE  also write the results as JSON (null where n/a)\n"
               "environment: DSR1_THREADS=N threads (default: all cores)\n");
}

/* One line of the report and its JSON member: the value, or n/a with the reason. */
static void limit_out(json_t *root, const char *label, const char *key, double v, const char *unit,
                      const char *why)
{
    if (v > 0) {
        printf("%-28s %8.1f %s\n", label, v, unit);
        json_object_set_new(root, key, json_real(v));
    } else {
        printf("%-28s %8s (%s)\n", label, "n/a", why);
        json_object_set_new(root, key, json_null());
    }
}

int dsr1__bench_limits(int argc, char **argv)
{
    bool quick;
    const char *json_path;
    const int prc =
        dsr1__bench_quick_json("dsr1-bench limits", argc, argv, usage, &quick, &json_path);
    if (prc) return prc == 1 ? 0 : 2;
    dsr1_pool *pool;
    if (dsr1_pool_create(0, &pool) != DSR1_OK) {
        fprintf(stderr, "dsr1-bench: %s\n", dsr1_errmsg());
        return 1;
    }
    const int passes = quick ? 8 : 20;
    const char *why_fma = "this CPU has no AVX-512F/FMA", *why_bf16 = "", *why_amx = "";
    const double bw =
        dsr1__bench_read_gbps(pool, quick ? (size_t)256 << 20 : (size_t)1 << 30, passes / 2);
    const double fma = dsr1__bench_fma_gflops(pool, passes);
    const double bf16 = dsr1__bench_bf16_gflops(pool, passes, &why_bf16);
    const double amx = dsr1__bench_amx_gflops(pool, passes, &why_amx);

    json_t *root = json_object();
    printf("dsr1-bench limits%s: %d threads\n", quick ? " --quick" : "", dsr1_pool_size(pool));
    json_object_set_new(root, "threads", json_integer(dsr1_pool_size(pool)));
    json_object_set_new(root, "quick", json_boolean(quick));
    limit_out(root, "streaming read", "read_gbps", bw, "GB/s", "out of memory");
    limit_out(root, "AVX-512 fp32 FMA peak", "fma_peak_gflops", fma, "GFLOP/s", why_fma);
    limit_out(root, "AVX512_BF16 vdpbf16ps peak", "bf16_peak_gflops", bf16, "GFLOP/s", why_bf16);
    limit_out(root, "AMX bf16 TDPBF16PS peak", "amx_bf16_peak_gflops", amx, "GFLOP/s", why_amx);
    int rc = 0;
    if (json_path && json_dump_file(root, json_path, JSON_INDENT(2)) != 0) {
        fprintf(stderr, "dsr1-bench: cannot write %s\n", json_path);
        rc = 1;
    }
    json_decref(root);
    dsr1_pool_destroy(pool);
    return rc;
}
