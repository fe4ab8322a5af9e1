/* `dsr1-bench`: the benchmark front door, one subcommand per file (bench.h). Results and
 * the commands that produced them are recorded in docs/kernels.md and docs/benchmarks.md. */
#include <stdio.h>
#include <string.h>

#include "bench.h"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"limits", dsr1__bench_limits,
     "this machine's read bandwidth and fp32 FMA, vdpbf16ps and AMX bf16 peaks"},
    {"kernels", dsr1__bench_kernels,
     "machine limits, FP8 linear at R1 expert shapes per kernel variant and "
     "against oneDNN, MLA decode attention"},
    {"experts", dsr1__bench_experts,
     "the routed experts of an MoE layer at R1 shapes: expert by expert vs one grouped call"},
    {"offline", dsr1__bench_offline,
     "prefill and decode throughput of the engine on fixed batches (like SGLang's "
     "bench_one_batch)"},
    {"serve", dsr1__bench_serve,
     "online serving against a running server: throughput, TTFT, TPOT, ITL (like `vllm bench "
     "serve`)"},
    {"grammar", dsr1__bench_grammar,
     "the grammar engine over a MaskBench directory of JSON Schemas"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: dsr1-bench <command> [options]   (dsr1-bench <command> --help)\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nenvironment: DSR1_THREADS=N (default: all cores)\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "dsr1-bench: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
