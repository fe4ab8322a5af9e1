/* dsr1-membw: this machine's streaming read bandwidth, the baseline for decode speed
 * (decode at batch 1 streams every active weight once per token). Reads a buffer far
 * larger than the caches with all pool threads, best of several passes.
 * usage: dsr1-membw [MB] (default 1024) — prints "read_gbps <value>". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "progress.h"
#include "threadpool.h"

typedef struct {
    const double *buf;
    double *sums;
} job;

static void read_task(void *arg, int begin, int end, int tid)
{
    job *j = arg;
    double acc[8] = {0};
    for (long i = (long)begin * 4096; i < (long)end * 4096; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += j->buf[i + l];
    j->sums[tid] = acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
}

int main(int argc, char **argv)
{
    long mb = argc > 1 ? atol(argv[1]) : 1024;
    if (mb < 64 || mb > 1 << 20) {
        fprintf(stderr, "usage: dsr1-membw [MB >= 64]\n");
        return 2;
    }
    size_t n = (size_t)mb << 20;
    double *buf = malloc(n);
    dsr1_pool *pool;
    if (!buf || dsr1_pool_create(0, &pool) != DSR1_OK) {
        fprintf(stderr, "dsr1-membw: cannot allocate %ld MB\n", mb);
        return 1;
    }
    memset(buf, 1, n);
    double sums[1024] = {0}, best = 0;
    job j = {buf, sums};
    int chunks = (int)(n / sizeof(double) / 4096);
    for (int pass = 0; pass < 5; pass++) {
        double t0 = dsr1_now();
        dsr1_pool_run(pool, chunks, 1, read_task, &j);
        double gbps = (double)chunks * 4096 * sizeof(double) / (dsr1_now() - t0) / 1e9;
        if (gbps > best) best = gbps;
    }
    printf("read_gbps %.2f threads %d checksum %g\n", best, dsr1_pool_size(pool), sums[0]);
    dsr1_pool_destroy(pool);
    free(buf);
    return 0;
}
