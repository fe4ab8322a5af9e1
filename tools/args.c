/* Command-line value parsing (see args.h). */
#include "args.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

int dsr1_arg_long(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !*s || *end || v < lo || v > hi) {
        fprintf(stderr, "%s: %s '%s': expected an integer in [%ld, %ld]\n", cmd, flag, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int dsr1_arg_double(const char *cmd, const char *flag, const char *s, double lo, double hi,
                    double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || !*s || *end || isnan(v) || v < lo || v > hi || (isinf(v) && !isinf(hi))) {
        fprintf(stderr, "%s: %s '%s': expected a number in [%g, %g]\n", cmd, flag, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int dsr1_arg_u64(const char *cmd, const char *flag, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || !*s || *end || s[0] == '-' || s[0] == '+' || s[0] == ' ') {
        fprintf(stderr, "%s: %s '%s': expected a non-negative integer\n", cmd, flag, s);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

int dsr1_arg_ids(const char *cmd, const char *flag, const char *s, int32_t **ids, size_t *n)
{
    size_t cap = 64, cnt = 0;
    int32_t *v = malloc(cap * sizeof(*v));
    for (const char *p = s; v && *p;) {
        if (strchr(", \t\r\n[]", *p)) {
            p++;
            continue;
        }
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX || (*end && !strchr(", \t\r\n[]", *end))) {
            fprintf(stderr,
                    "%s: %s: '%.20s' is not a token id (ids are non-negative integers "
                    "separated by commas or spaces)\n",
                    cmd, flag, p);
            free(v);
            return -1;
        }
        if (cnt == cap) {
            int32_t *g = realloc(v, (cap *= 2) * sizeof(*v));
            if (!g) free(v);
            v = g;
        }
        if (v) v[cnt++] = (int32_t)x;
        p = end;
    }
    if (!v) {
        fprintf(stderr, "%s: out of memory\n", cmd);
        return -1;
    }
    *ids = v;
    *n = cnt;
    return 0;
}

int dsr1_arg_precision(const char *cmd, const char *precision, const char **kernels)
{
    const char *k = *kernels && strcmp(*kernels, "auto") ? *kernels : NULL;
    if (!precision || !strcmp(precision, "exact")) {
        if (precision && dsr1_kernels_name_is_fast(k)) {
            fprintf(stderr, "%s: --precision exact, but --kernels %s is the fast mode\n", cmd, k);
            return -1;
        }
        return 0;
    }
    if (strcmp(precision, "fast")) {
        fprintf(stderr, "%s: --precision '%s': expected exact or fast\n", cmd, precision);
        return -1;
    }
    if (k && !dsr1_kernels_name_is_fast(k)) {
        fprintf(stderr, "%s: --precision fast, but --kernels %s is exact\n", cmd, k);
        return -1;
    }
    if (!k) *kernels = "bf16-tiles";
    return 0;
}
