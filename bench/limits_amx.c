/* The AMX bf16 peak of `dsr1-bench limits` and `dsr1-bench kernels` (bench.h): TDPBF16PS
 * in a loop on tiles only, no memory traffic. Built with -mamx-tile -mamx-bf16 where the
 * compiler has them (bench/meson.build, this file only). No tile instruction runs before
 * dsr1__tile_amx() (kernels/cpu/tile.h) has found AMX-TILE and AMX-BF16 in CPUID and Linux
 * has granted this process the tile data permission, so a CPU without AMX gets "n/a",
 * never a SIGILL. */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#include "bench.h"
#include "cpu/tile.h"
#include "progress.h"

#define MAX_THREADS 1024

#if DSR1_BENCH_AMX
typedef struct {
    long iters;
    float sink[MAX_THREADS];
} amx_job;

/* Tiles 0-3: 16 x 16 fp32 accumulators; 4-5: "A", 16 rows of 32 bf16; 6-7: "B", 16 VNNI
 * rows of 16 bf16 pairs (tile.h's convention). Four independent chains C[a][b] += A[a] B[b]
 * (4 x 16 cycles of throughput cover TDPBF16PS's latency), each instruction 16 x 16 x 32 =
 * 8192 multiply-adds. Tile state is per thread: every call configures its thread's tiles
 * and releases them at the end, so pool threads keep no AMX state after the measurement. */
static void amx_task(void *arg, int begin, int end, int tid)
{
    amx_job *j = arg;
    dsr1__tilecfg cfg = {.palette = 1};
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = DSR1__TILE_COLSB;
        cfg.rows[t] = DSR1__TILE_ROWS;
    }
    _Alignas(64) uint16_t ab[DSR1__TILE_ROWS * DSR1__TILE_COLSB / 2];
    _Alignas(64) float c[DSR1__TILE_ROWS * DSR1__TILE_COLSB / 4];
    for (size_t i = 0; i < sizeof(ab) / sizeof(ab[0]); i++)
        ab[i] = 0x3a83; /* bf16 1.0e-3: the sums stay normal, never denormal or inf */
    _tile_loadconfig(&cfg);
    _tile_loadd(4, ab, DSR1__TILE_COLSB);
    _tile_loadd(5, ab, DSR1__TILE_COLSB);
    _tile_loadd(6, ab, DSR1__TILE_COLSB);
    _tile_loadd(7, ab, DSR1__TILE_COLSB);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int it = begin; it < end; it++)
        for (long i = 0; i < j->iters; i++) {
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    float s = 0;
    _tile_stored(0, c, DSR1__TILE_COLSB);
    s += c[0];
    _tile_stored(3, c, DSR1__TILE_COLSB);
    s += c[255];
    _tile_release();
    j->sink[tid] += s;
}
#endif

double dsr1__bench_amx_gflops(dsr1_pool *pool, int passes, const char **why)
{
    /* first: it asks Linux for the tile permission, and says why not on a CPU without AMX */
    if (!dsr1__tile_amx(why)) return 0;
#if DSR1_BENCH_AMX
    amx_job *j = calloc(1, sizeof(*j));
    if (!j) {
        *why = "out of memory";
        return 0;
    }
    j->iters = 1 << 17; /* 8 items x 4 x 2^17 TDPBF16PS of 16 cycles: ~0.03 s per pass at 2 GHz */
    const double best =
        dsr1__bench_best_gflops(pool, passes, amx_task, j, (double)j->iters * 4 * 16384);
    free(j);
    return best;
#else
    (void)pool;
    (void)passes;
    *why = "dsr1-bench was built without -mamx-tile -mamx-bf16";
    return 0;
#endif
}
