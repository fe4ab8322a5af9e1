/* Subcommands of `dsr1-bench` (bench/main.c dispatches; one file per subcommand). Each
 * takes argv starting at its own name and returns the process exit status. */
#ifndef DSR1_BENCH_H
#define DSR1_BENCH_H

/* bench/kernels.c: machine limits and kernel throughput at R1 expert shapes */
int dsr1__bench_kernels(int argc, char **argv);

#endif
