/* Parsing command-line values, shared by the `dsr1` subcommands and `dsr1-worker`, so that
 * every tool accepts the same forms and words its errors the same way:
 *   "dsr1 run: --threads 'x': expected an integer in [1, 4096]".
 * Each returns 0 on success, or prints that message to stderr and returns -1 (callers
 * exit with status 2, a usage error). `cmd` is the tool's name as printed ("dsr1 run"). */
#ifndef DSR1_TOOLS_ARGS_H
#define DSR1_TOOLS_ARGS_H

#include <stddef.h>
#include <stdint.h>

/* A decimal integer in [lo, hi], nothing else. */
int dsr1_arg_long(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out);
/* A finite decimal number in [lo, hi] (hi may be INFINITY, then "inf" is accepted too). */
int dsr1_arg_double(const char *cmd, const char *flag, const char *s, double lo, double hi,
                    double *out);
/* A non-negative decimal integer up to 2^64 - 1 (seeds). */
int dsr1_arg_u64(const char *cmd, const char *flag, const char *s, uint64_t *out);
/* Token ids: non-negative integers separated by commas and/or white space; '[' and ']' are
 * skipped so a JSON array works too. *ids is malloc'ed (free it); *n may be 0. */
int dsr1_arg_ids(const char *cmd, const char *flag, const char *s, int32_t **ids, size_t *n);

/* --precision exact|fast and --kernels together: the kernel variant to ask for. "fast" is the
 * fast mode (docs/kernels.md: bf16-tiles, or the bf16-tiles-emulated that --kernels may
 * name); "exact" (or no --precision) keeps *kernels, which must not then name a fast
 * variant (dsr1_kernels_name_is_fast). precision may be NULL (not given). */
int dsr1_arg_precision(const char *cmd, const char *precision, const char **kernels);

#endif
