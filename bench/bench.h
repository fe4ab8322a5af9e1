/* Subcommands of `dsr1-bench` (bench/main.c dispatches; one file per subcommand), their
 * shared option parsing (bench/opts.c), the machine limits they are measured against
 * (bench/limits.c, limits_amx.c) and the oneDNN baseline (bench/onednn.c). */
#ifndef DSR1_BENCH_H
#define DSR1_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "threadpool.h"

struct option; /* getopt.h */

/* bench/kernels.c: machine limits and kernel throughput at R1 shapes. Takes argv starting
 * at its own name; returns the process exit status. */
int dsr1__bench_kernels(int argc, char **argv);
/* bench/experts.c: the routed experts of an MoE layer, expert by expert vs expert_ffn. */
int dsr1__bench_experts(int argc, char **argv);
/* bench/offline.c: prefill and decode throughput of the engine on fixed batches. */
int dsr1__bench_offline(int argc, char **argv);
/* bench/serve.c: a running server's online serving performance, as `vllm bench serve`. */
int dsr1__bench_serve(int argc, char **argv);
/* bench/grammar.c: the grammar engine's compile and mask times over MaskBench schemas. */
int dsr1__bench_grammar(int argc, char **argv);
/* bench/limits.c: this machine's bandwidth and arithmetic peaks (the functions below). */
int dsr1__bench_limits(int argc, char **argv);

/* bench/opts.c: getopt_long over a subcommand's argv, with what every subcommand does the
 * same way: the option 'h' (-h, --help) prints usage to stdout; an unknown option or a
 * missing value prints usage to stderr; a non-option argument after the options is refused
 * with "<cmd>: unexpected argument 'x'" on stderr. Returns the next option for the caller
 * to handle (optarg set), or -1 at the end with *end = 0 (run), 1 (help printed: exit 0)
 * or 2 (usage error printed: exit 2). As getopt_long, it goes on from optind. */
int dsr1__bench_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
                       const struct option *longopts, void (*usage)(FILE *f), int *end);
/* The options of `kernels`, `experts` and `limits`: --quick, --json FILE and --help. Returns 0 to
 * run, 1 after help, 2 after a usage error, as dsr1__bench_getopt's *end. */
int dsr1__bench_quick_json(const char *cmd, int argc, char **argv, void (*usage)(FILE *f),
                           bool *quick, const char **json);

/* xorshift64: the benchmarks' cheap random stream (data, not statistics); s != 0. */
static inline uint64_t dsr1__bench_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Streaming read bandwidth of all pool threads over a `bytes` buffer (far larger than the
 * caches), best of `passes`, in GB/s; 0 when the buffer cannot be allocated. */
double dsr1__bench_read_gbps(dsr1_pool *pool, size_t bytes, int passes);
/* fp32 FMA peak of all pool threads with AVX-512 (register-only loop), best of `passes`
 * (each ~0.05 s on 2 cores), in GFLOP/s; 0 when the CPU has no AVX-512. */
double dsr1__bench_fma_gflops(dsr1_pool *pool, int passes);
/* The peak loops' common timing: the best of `passes` runs of 8 items per pool thread of
 * `task` (each item flops_per_item flops), in GFLOP/s. */
double dsr1__bench_best_gflops(dsr1_pool *pool, int passes, dsr1_pool_fn task, void *job,
                               double flops_per_item);
/* bf16 dot-product peak of all pool threads with AVX512_BF16 (VDPBF16PS on zmm, register
 * only; one instruction = 32 products = 64 flops), best of `passes` (each ~0.05 s on 2
 * cores), in GFLOP/s; 0 with *why (a phrase) when the CPU or build lacks it. */
double dsr1__bench_bf16_gflops(dsr1_pool *pool, int passes, const char **why);
/* bf16 peak of AMX tiles on all pool threads (TDPBF16PS on tiles only, bench/limits_amx.c;
 * one instruction = 16 x 16 x 32 products = 16384 flops), best of `passes`, in GFLOP/s; 0
 * with *why when the CPU, the kernel's tile permission or the build lacks it. */
double dsr1__bench_amx_gflops(dsr1_pool *pool, int passes, const char **why);

/* oneDNN's matmul on y = x W^T (W: n x k f32, row-major, as dequantised from our FP8; x:
 * m x k f32), in bf16 (weights and activations converted once, f32 output) or f32, with
 * `threads` OpenMP threads; weights reordered once into copies filling pool_bytes, cycled
 * by successive runs. Returns NULL, with the reason in why, when oneDNN is not built in or
 * fails. desc receives the packed bytes of one weight copy, oneDNN's implementation name
 * and the output (m x n f32, valid until destroy). */
typedef struct dsr1__onednn_mm dsr1__onednn_mm;
typedef struct {
    double weight_bytes;
    char impl[64];
    const float *y;
} dsr1__onednn_desc;
dsr1__onednn_mm *dsr1__onednn_create(bool bf16, const float *w, int n, int k, const float *x, int m,
                                     size_t pool_bytes, int threads, dsr1__onednn_desc *desc,
                                     char *why, size_t why_len);
/* One product on the next weight copy; returns when it is done. */
void dsr1__onednn_run(dsr1__onednn_mm *mm);
void dsr1__onednn_destroy(dsr1__onednn_mm *mm);
/* "oneDNN 2.6.3, 2 OpenMP threads" or why it is absent; written into buf. */
const char *dsr1__onednn_version(char *buf, size_t len);

#endif
