/* This machine's limits, measured rather than looked up, for the benchmarks' ratios: the
 * streaming read bandwidth of all pool threads (the ceiling of decode, which streams the
 * active weights once per token) and the fp32 FMA peak (the ceiling of prefill). Both are
 * the best of many short passes, so that a moment of quiet on a shared machine is enough. */
#include <immintrin.h>
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
