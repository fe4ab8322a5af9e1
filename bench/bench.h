/* Subcommands of `dsr1-bench` (bench/main.c dispatches; one file per subcommand) and the
 * machine limits they are measured against (bench/limits.c). */
#ifndef DSR1_BENCH_H
#define DSR1_BENCH_H

#include <stddef.h>

#include "threadpool.h"

/* bench/kernels.c: machine limits and kernel throughput at R1 shapes. Takes argv starting
 * at its own name; returns the process exit status. */
int dsr1__bench_kernels(int argc, char **argv);

/* Streaming read bandwidth of all pool threads over a `bytes` buffer (far larger than the
 * caches), best of `passes`, in GB/s; 0 when the buffer cannot be allocated. */
double dsr1__bench_read_gbps(dsr1_pool *pool, size_t bytes, int passes);
/* fp32 FMA peak of all pool threads with AVX-512 (register-only loop), best of `passes`
 * (each ~0.05 s on 2 cores), in GFLOP/s; 0 when the CPU has no AVX-512. */
double dsr1__bench_fma_gflops(dsr1_pool *pool, int passes);

#endif
