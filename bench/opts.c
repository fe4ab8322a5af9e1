/* Option parsing shared by the `dsr1-bench` subcommands (bench.h): the getopt loop's help,
 * unknown-option and stray-argument handling, and the --quick/--json pair of `kernels`,
 * `experts` and `limits`. */
#include <getopt.h>
#include <stdio.h>

#include "bench.h"

int dsr1__bench_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
                       const struct option *longopts, void (*usage)(FILE *f), int *end)
{
    const int c = getopt_long(argc, argv, shortopts, longopts, NULL);
    if (c == 'h') {
        usage(stdout);
        *end = 1;
        return -1;
    }
    if (c == '?' || c == ':') {
        usage(stderr);
        *end = 2;
        return -1;
    }
    if (c != -1) return c;
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s'\n", cmd, argv[optind]);
        *end = 2;
        return -1;
    }
    *end = 0;
    return -1;
}

int dsr1__bench_quick_json(const char *cmd, int argc, char **argv, void (*usage)(FILE *f),
                           bool *quick, const char **json)
{
    static const struct option opts[] = {{"quick", no_argument, 0, 'q'},
                                         {"json", required_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    *quick = false;
    *json = NULL;
    int c, end;
    while ((c = dsr1__bench_getopt(cmd, argc, argv, "qj:h", opts, usage, &end)) != -1) {
        if (c == 'q')
            *quick = true;
        else if (c == 'j')
            *json = optarg;
    }
    return end;
}
