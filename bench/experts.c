/* `dsr1-bench experts`: the routed experts of one MoE layer at DeepSeek-R1 shapes (hidden
 * 7168, moe_intermediate 2048, FP8 with 128x128 block scales, top-8 routing), run the two
 * ways the engine can: expert after expert through `linear` (three products per expert,
 * each its own parallel loop, as worker/moe.c did before expert_ffn) and in one grouped
 * `expert_ffn` call, for every kernel variant, interleaved per repetition on the same
 * routing and checked bit for bit against each other.
 *
 * Weights are dsr1_randw's (the values `dsr1 mkmodel` writes) for E experts; each call takes
 * the next experts round-robin, so that, as with R1's 256 experts, they come from DRAM
 * rather than the cache. Token counts: 1 and 4 (decode: 8 and ~32 experts with a token or
 * two each), 64 and 512 (prefill: 32 and 256 tokens per expert with E = 16).
 * usage: dsr1-bench experts [--quick] [--json FILE] */
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "kernels.h"
#include "progress.h"
#include "randw.h"

#define HIDDEN 7168
#define INTER  2048
#define TOPK   8
#define MAX_V  4

typedef struct {
    int ne;           /* experts held */
    dsr1_linear *w;   /* [ne][3]: gate, up, down */
    uint8_t *q;       /* all weights */
    float *scale;     /* all block scales */
    int *rows;        /* [TOPK * tokens]: per expert, its tokens */
    float *weight;    /* routing weights, same layout */
    dsr1_expert *ex;  /* [ne] the current call's experts */
    float *x, *y, *o; /* activations, output, a scratch output for the one-by-one path */
    float *xin, *g, *u;
} moe_set;

/* The experts' matrices (gate, up, down of expert t / 3) over the pool. */
static void fill_task(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const moe_set *s = arg;
    static const char *const names[3] = {"gate", "up", "down"};
    dsr1_randw *rw = malloc(sizeof(*rw));
    if (!rw) abort();
    dsr1_randw_init(rw, 1234);
    for (int t = begin; t < end; t++) {
        const int e = t / 3, m = t % 3;
        const dsr1_linear *w = &s->w[e * 3 + m];
        char stream[32];
        snprintf(stream, sizeof(stream), "expert%d.%s", e, names[m]);
        dsr1_randw_fp8_rows(rw, stream, w->rows, w->cols, 1.0f, 0, (w->rows + 127) / 128,
                            (uint8_t *)w->data, (float *)w->scale);
    }
    free(rw);
}

static int moe_set_make(moe_set *s, dsr1_pool *pool, int ne, int tmax)
{
    const size_t wb = (size_t)INTER * HIDDEN, sb = (size_t)(INTER / 128) * (HIDDEN / 128);
    memset(s, 0, sizeof(*s));
    s->ne = ne;
    s->w = calloc((size_t)ne * 3, sizeof(dsr1_linear));
    s->q = malloc(wb * 3 * ne);
    s->scale = malloc(sizeof(float) * sb * 3 * ne);
    s->rows = malloc(sizeof(int) * TOPK * tmax);
    s->weight = malloc(sizeof(float) * TOPK * tmax);
    s->ex = calloc((size_t)ne, sizeof(dsr1_expert));
    s->x = malloc(sizeof(float) * HIDDEN * tmax);
    s->y = malloc(sizeof(float) * HIDDEN * tmax);
    s->o = malloc(sizeof(float) * HIDDEN * tmax);
    s->xin = malloc(sizeof(float) * HIDDEN * tmax);
    s->g = malloc(sizeof(float) * INTER * tmax);
    s->u = malloc(sizeof(float) * INTER * tmax);
    if (!s->w || !s->q || !s->scale || !s->rows || !s->weight || !s->ex || !s->x || !s->y ||
        !s->o || !s->xin || !s->g || !s->u)
        return -1;
    for (int e = 0; e < ne; e++)
        for (int m = 0; m < 3; m++) {
            const size_t i = (size_t)e * 3 + m;
            s->w[i] = (dsr1_linear){DSR1_DT_F8_E4M3, m == 2 ? HIDDEN : INTER,
                                    m == 2 ? INTER : HIDDEN, s->q + wb * i, s->scale + sb * i};
        }
    dsr1_pool_run(pool, ne * 3, 1, fill_task, s);
    for (size_t i = 0; i < (size_t)HIDDEN * tmax; i++) s->x[i] = (float)sin(0.37 * (double)i);
    return 0;
}

static void moe_set_free(moe_set *s)
{
    free(s->w);
    free(s->q);
    free(s->scale);
    free(s->rows);
    free(s->weight);
    free(s->ex);
    free(s->x);
    free(s->y);
    free(s->o);
    free(s->xin);
    free(s->g);
    free(s->u);
}

/* The routing of one call: token t goes to experts (base + t + 2 j) mod ne, j < 8, so every
 * expert gets about tokens * 8 / ne tokens; experts listed in increasing id. */
static int route(moe_set *s, int tokens, int base)
{
    int n = 0, used = 0;
    for (int e = 0; e < s->ne; e++) {
        dsr1_expert *x = &s->ex[used];
        *x = (dsr1_expert){&s->w[e * 3], &s->w[e * 3 + 1], &s->w[e * 3 + 2], 0,
                           s->rows + n,  s->weight + n};
        for (int t = 0; t < tokens; t++)
            for (int j = 0; j < TOPK; j++)
                if ((base + t + 2 * j) % s->ne == e) {
                    s->rows[n] = t;
                    s->weight[n++] = 0.125f + 0.01f * j;
                    x->n++;
                }
        used += x->n > 0;
    }
    return used;
}

/* Expert after expert through k->linear (worker/moe.c before expert_ffn). */
static void one_by_one(const dsr1_kernels *k, dsr1_pool *pool, moe_set *s, int nex)
{
    for (int e = 0; e < nex; e++) {
        const dsr1_expert *x = &s->ex[e];
        for (int i = 0; i < x->n; i++)
            memcpy(s->xin + (size_t)i * HIDDEN, s->x + (size_t)x->rows[i] * HIDDEN,
                   sizeof(float) * HIDDEN);
        k->linear(pool, x->gate, 0, INTER, s->xin, HIDDEN, x->n, s->g, INTER);
        k->linear(pool, x->up, 0, INTER, s->xin, HIDDEN, x->n, s->u, INTER);
        for (size_t i = 0; i < (size_t)x->n * INTER; i++) {
            const float sl = s->g[i] / (1.0f + expf(-s->g[i]));
            s->g[i] = sl * s->u[i];
        }
        k->linear(pool, x->down, 0, HIDDEN, s->g, INTER, x->n, s->o, HIDDEN);
        for (int i = 0; i < x->n; i++) {
            float *yt = s->y + (size_t)x->rows[i] * HIDDEN;
            for (int c = 0; c < HIDDEN; c++) yt[c] += s->o[(size_t)i * HIDDEN + c] * x->weight[i];
        }
    }
}

typedef struct {
    int tokens, experts;
    const char *variant;
    double sec[2]; /* one by one, grouped */
    double bytes, flops;
    bool same;
} row;

/* Seconds per call of one way (grouped or not), best of reps, routing rotated per call. */
static double time_way(const dsr1_kernels *k, dsr1_pool *pool, moe_set *s, int tokens, bool grouped,
                       int *base, double min_time)
{
    int calls = 0;
    const double t0 = dsr1_now();
    double t;
    do {
        const int nex = route(s, tokens, *base);
        *base = (*base + 1) % s->ne;
        if (grouped)
            k->expert_ffn(pool, s->ex, nex, s->x, HIDDEN, s->y, HIDDEN);
        else
            one_by_one(k, pool, s, nex);
        calls++;
    } while ((t = dsr1_now() - t0) < min_time);
    return t / calls;
}

static void measure(dsr1_pool *pool, moe_set *s, int tokens, const dsr1_kernels **vars, int nv,
                    int reps, double min_time, row *out)
{
    float *ref = malloc(sizeof(float) * HIDDEN * tokens);
    if (!ref) abort();
    for (int v = 0; v < nv; v++) {
        row *r = &out[v];
        const int nex = route(s, tokens, 0);
        memset(s->y, 0, sizeof(float) * HIDDEN * tokens);
        one_by_one(vars[v], pool, s, nex);
        memcpy(ref, s->y, sizeof(float) * HIDDEN * tokens);
        memset(s->y, 0, sizeof(float) * HIDDEN * tokens);
        vars[v]->expert_ffn(pool, s->ex, nex, s->x, HIDDEN, s->y, HIDDEN);
        *r = (row){tokens,
                   nex,
                   vars[v]->name,
                   {INFINITY, INFINITY},
                   (double)nex * 3 * INTER * HIDDEN,
                   2.0 * TOPK * tokens * 3 * INTER * HIDDEN,
                   !memcmp(ref, s->y, sizeof(float) * HIDDEN * tokens)};
    }
    /* ways and variants interleaved per repetition, so that drift hits all */
    int base = 0;
    for (int rep = 0; rep < reps; rep++)
        for (int v = 0; v < nv; v++)
            for (int g = 0; g < 2; g++)
                out[v].sec[g] =
                    fmin(out[v].sec[g], time_way(vars[v], pool, s, tokens, g, &base, min_time));
    free(ref);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: dsr1-bench experts [--quick] [--json FILE]\n"
               "  --quick      16 experts in memory (700 MB), fewer repetitions (about a "
               "minute)\n"
               "  --json FILE  also write the results as JSON\n"
               "environment: DSR1_THREADS=N threads (default: all cores)\n");
}

int dsr1__bench_experts(int argc, char **argv)
{
    bool quick;
    const char *json_path;
    const int prc =
        dsr1__bench_quick_json("dsr1-bench experts", argc, argv, usage, &quick, &json_path);
    if (prc) return prc == 1 ? 0 : 2;
    dsr1_pool *pool;
    if (dsr1_pool_create(0, &pool) != DSR1_OK) {
        fprintf(stderr, "dsr1-bench: %s\n", dsr1_errmsg());
        return 1;
    }
    static const char *const names[] = {"portable", "avx512", "bf16-tiles"};
    const dsr1_kernels *vars[MAX_V];
    int nv = 0;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((vars[nv] = dsr1_kernels_select(names[i]))) nv++;
    static const int tokens[] = {1, 4, 64, 512};
    const int ncase = quick ? 3 : 4, reps = quick ? 3 : 5;
    const double min_time = quick ? 0.2 : 0.4;
    moe_set s;
    fprintf(stderr, "random FP8 weights of %d experts ...\n", quick ? 16 : 32);
    if (moe_set_make(&s, pool, quick ? 16 : 32, tokens[ncase - 1]) != 0) {
        fprintf(stderr, "dsr1-bench experts: out of memory\n");
        moe_set_free(&s);
        dsr1_pool_destroy(pool);
        return 1;
    }
    row *rows = calloc((size_t)ncase * MAX_V, sizeof(row));
    int nr = 0;
    for (int i = 0; rows && i < ncase; i++) {
        /* portable: decode shapes only (a prefill call takes it seconds) */
        const int nvi = tokens[i] > 4 && nv > 1 ? nv - 1 : nv;
        fprintf(stderr, "%d tokens ...\n", tokens[i]);
        measure(pool, &s, tokens[i], nvi == nv ? vars : vars + 1, nvi, reps, min_time, rows + nr);
        nr += nvi;
    }
    printf("dsr1-bench experts%s: %d threads, %d experts in memory; R1 expert shapes (hidden "
           "%d, inter %d, FP8), top-%d\n",
           quick ? " --quick" : "", dsr1_pool_size(pool), s.ne, HIDDEN, INTER, TOPK);
    printf("%6s %7s  %-11s %12s %12s %8s %9s %9s  %s\n", "tokens", "experts", "variant",
           "1-by-1 ms", "grouped ms", "speedup", "W GB/s", "GFLOP/s", "grouped = 1-by-1");
    json_t *jres = json_array();
    for (int i = 0; i < nr; i++) {
        const row *r = &rows[i];
        printf("%6d %7d  %-11s %12.3f %12.3f %7.2fx %9.2f %9.1f  %s\n", r->tokens, r->experts,
               r->variant, r->sec[0] * 1e3, r->sec[1] * 1e3, r->sec[0] / r->sec[1],
               r->bytes / r->sec[1] / 1e9, r->flops / r->sec[1] / 1e9,
               r->same ? "bit-identical" : "DIFFERENT");
        json_array_append_new(jres, json_pack("{s:i,s:i,s:s,s:f,s:f,s:b}", "tokens", r->tokens,
                                              "experts", r->experts, "variant", r->variant,
                                              "one_by_one_s", r->sec[0], "grouped_s", r->sec[1],
                                              "bit_identical", r->same));
    }
    int rc = rows ? 0 : 1;
    for (int i = 0; i < nr; i++) rc |= !rows[i].same;
    if (json_path) {
        json_t *root = json_pack("{s:i,s:b,s:o}", "threads", dsr1_pool_size(pool), "quick", quick,
                                 "results", jres);
        if (json_dump_file(root, json_path, JSON_INDENT(2)) != 0) {
            fprintf(stderr, "dsr1-bench: cannot write %s\n", json_path);
            rc = 1;
        }
        json_decref(root);
    } else {
        json_decref(jres);
    }
    free(rows);
    moe_set_free(&s);
    dsr1_pool_destroy(pool);
    return rc;
}
