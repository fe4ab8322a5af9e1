/* `dsr1-bench offline`: the engine's throughput on fixed batches, measured as SGLang's
 * bench_one_batch does. For each batch size B: one prefill step of B sequences of
 * --input-len random tokens (each its own cache slot, all in one dsr1_batch), then
 * --output-len decode steps of B tokens, each sequence feeding its greedy next token.
 * One warm-up step of B single tokens comes first. Times cover dsr1_engine_forward only.
 *
 * Both phases are compared with rooflines built from this machine's limits, measured in the
 * same run (bench/limits.c, after loading and again at the end; the larger is used):
 *   - bandwidth: the bytes a decode step must read over the streaming read bandwidth. They
 *     are the weights it touches, dsr1_weights_active_bytes() with the routed experts
 *     counted for B tokens (each held expert is hit with probability 1 - (1 - k/E)^B under
 *     uniform routing), plus the cache rows its attention reads (B x context x layers x
 *     (kv_lora + rope) floats, at the mean context of the decode steps);
 *   - compute: the step's flops (2 per weight a token multiplies, its k/E share of the
 *     held experts, attention against its context, the LM head for the rows asked for)
 *     over the fp32 FMA peak, the ceiling of the exact kernels.
 * Decode at small B is bound by the first, prefill and large-B decode by the second.
 *
 * --paged runs the same batches on the engine as `dsr1 serve` runs it (the engine side of
 * serving, without the scheduler and the frontends): a paged cache of dsr1 serve's default
 * size (coordinator/sched/backend.c), block tables grown a block at a time as the scheduler
 * grows them (coordinator/sched/admit.c) from a shuffled free list (a long-running server's
 * blocks come back in any order), and the greedy draw in the engine (the sample requests
 * the scheduler sends) instead of the argmax here after the step. --compare-paged N
 * alternates both engines N times in one process and prints the ratios, and checks that
 * both draw the same tokens (a sequence's logits do not depend on paging).
 *
 * usage: dsr1-bench offline --model DIR [--dummy-weights [--layers N]] [--batch 1,8,64] ... */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "bench.h"
#include "ckpt.h"
#include "forward.h"
#include "progress.h"

#define MAX_BATCHES 16
#define CMD         "dsr1-bench offline"
/* dsr1 serve's cache defaults (coordinator/sched/backend.c): blocks of 32 tokens, 64K tokens
 * of cache, fewer when they would take more than 8 GiB */
#define SERVE_BLOCK_TOKENS 32
#define SERVE_KV_TOKENS    65536
#define SERVE_KV_BYTES     (8ll << 30)

typedef struct {
    const char *model, *kernels, *json;
    bool dummy;
    int layers, experts, threads, input_len, output_len, nbatch;
    int batch[MAX_BATCHES];
    uint64_t seed;
    bool paged;       /* --paged: the engine as dsr1 serve runs it */
    int block_tokens; /* of the paged cache */
    int compare;      /* --compare-paged N: N alternating pairs (slots, paged) per batch size */
} offline_opts;

typedef struct {
    int batch;
    bool paged; /* run on the paged engine (else slots) */
    int round;  /* --compare-paged: the pair it belongs to (from 1) */
    double prefill_s, prefill_flops;
    double prefill_cpu_s, decode_cpu_s; /* the process's CPU time (all threads) in those steps */
    double decode_s, step_median_s, step_bytes, step_flops;
    double *step_s;  /* output_len step times */
    int32_t *tokens; /* [output_len + 1][batch]: the tokens drawn after prefill and each step */
} offline_row;

/* This machine's limits, measured after loading and at the end (bench/limits.c). */
typedef struct {
    double bw, bw0, bw1;       /* streaming read GB/s: max, before, after */
    double peak, peak0, peak1; /* fp32 FMA GFLOP/s */
} offline_limits;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsr1-bench offline --model DIR [options]\n\n"
            "Prefill and decode throughput of the engine on fixed batches (like SGLang's\n"
            "bench_one_batch): for each batch size B, one prefill step of B sequences of\n"
            "--input-len tokens, then --output-len decode steps of B tokens; prefill and\n"
            "decode tokens/s, the median decode step, and both against this machine's\n"
            "rooflines measured in the same run: bytes a step reads / read bandwidth, and\n"
            "its flops / fp32 FMA peak.\n\n"
            "  --model DIR        checkpoint directory, or with --dummy-weights a config.json\n"
            "                     (or a directory holding one)\n"
            "  --dummy-weights    random weights made in memory from the config alone\n"
            "  --layers N         with --dummy-weights: keep only the first N layers\n"
            "  --experts N        hold only N routed experts, spread evenly (the share of one\n"
            "                     expert-parallel rank; tokens routed elsewhere skip them)\n"
            "  --seed S           seed of --dummy-weights and of the prompts (default 1)\n"
            "  --batch LIST       batch sizes, comma-separated (default 1,8,64)\n"
            "  --input-len N      prompt tokens per sequence (default 128)\n"
            "  --output-len N     decode steps (default 32)\n"
            "  --kernels NAME     kernel variant: auto (default), portable, avx512, bf16-tiles\n"
            "  --threads N        worker threads (default: DSR1_THREADS or all cores)\n"
            "  --paged            run the engine as `dsr1 serve` runs it: a paged cache of its\n"
            "                     default size, block tables grown a block at a time from a\n"
            "                     shuffled free list, the greedy draw in the engine (default:\n"
            "                     one cache slot per sequence, argmax after the step)\n"
            "  --block-tokens N   tokens per block of the paged cache (default 32, as dsr1 serve)\n"
            "  --compare-paged N  per batch size, N pairs of runs on both engines, alternating\n"
            "                     in one process; prints paged / slots ratios (wall and CPU\n"
            "                     time) and whether both drew the same tokens\n"
            "  --json FILE        also write the results as JSON\n"
            "  -h, --help         this text\n\n"
            "A prefill step of T = B x input-len tokens needs scratch memory of about 1 MB per\n"
            "token at R1's shapes; keep T within memory. With --paged the prompts are prefilled\n"
            "in that one step too (dsr1 serve splits them into steps of --max-step-tokens).\n");
}

static int parse_batches(const char *s, offline_opts *o)
{
    int32_t *ids = NULL;
    size_t n = 0;
    if (dsr1_arg_ids(CMD, "--batch", s, &ids, &n)) return -1;
    int rc = 0;
    if (n == 0 || n > MAX_BATCHES) {
        fprintf(stderr, CMD ": --batch: expected 1 to %d batch sizes\n", MAX_BATCHES);
        rc = -1;
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (ids[i] < 1 || ids[i] > 4096) {
            fprintf(stderr, CMD ": --batch: %d is not a batch size in [1, 4096]\n", ids[i]);
            rc = -1;
        }
        o->batch[i] = ids[i];
    }
    o->nbatch = (int)n;
    free(ids);
    return rc;
}

/* 0: run; 1: help printed; 2: usage error (printed). */
static int parse(int argc, char **argv, offline_opts *o)
{
    // clang-format off
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"dummy-weights", no_argument, 0, 'D'},
        {"layers", required_argument, 0, 'L'},     {"experts", required_argument, 0, 'E'},
        {"seed", required_argument, 0, 's'},       {"batch", required_argument, 0, 'b'},
        {"input-len", required_argument, 0, 'i'},  {"output-len", required_argument, 0, 'o'},
        {"kernels", required_argument, 0, 'k'},    {"threads", required_argument, 0, 't'},
        {"json", required_argument, 0, 'j'},       {"help", no_argument, 0, 'h'},
        {"paged", no_argument, 0, 'P'},            {"block-tokens", required_argument, 0, 'B'},
        {"compare-paged", required_argument, 0, 'C'},
        {0, 0, 0, 0}};
    // clang-format on
    *o = (offline_opts){.input_len = 128,
                        .output_len = 32,
                        .nbatch = 3,
                        .batch = {1, 8, 64},
                        .seed = 1,
                        .block_tokens = SERVE_BLOCK_TOKENS};
    int c, end;
    long v;
    optind = 1;
    while ((c = dsr1__bench_getopt(CMD, argc, argv, "h", opts, usage, &end)) != -1) {
        switch (c) {
        case 'm':
            o->model = optarg;
            break;
        case 'D':
            o->dummy = true;
            break;
        case 'P':
            o->paged = true;
            break;
        case 'k':
            o->kernels = optarg;
            break;
        case 'j':
            o->json = optarg;
            break;
        case 's':
            if (dsr1_arg_u64(CMD, "--seed", optarg, &o->seed)) return 2;
            break;
        case 'b':
            if (parse_batches(optarg, o)) return 2;
            break;
        case 'L':
        case 'E':
        case 't':
        case 'i':
        case 'o':
        case 'B':
        case 'C': {
            const char *flag = c == 'L'   ? "--layers"
                               : c == 'E' ? "--experts"
                               : c == 't' ? "--threads"
                               : c == 'i' ? "--input-len"
                               : c == 'B' ? "--block-tokens"
                               : c == 'C' ? "--compare-paged"
                                          : "--output-len";
            if (dsr1_arg_long(CMD, flag, optarg, c == 'o' ? 0 : 1, c == 'C' ? 100 : 1 << 20, &v))
                return 2;
            *(c == 'L'   ? &o->layers
              : c == 'E' ? &o->experts
              : c == 't' ? &o->threads
              : c == 'i' ? &o->input_len
              : c == 'B' ? &o->block_tokens
              : c == 'C' ? &o->compare
                         : &o->output_len) = (int)v;
            break;
        }
        }
    }
    if (end) return end;
    if (!o->model) {
        fprintf(stderr, CMD ": --model is required\n\n");
        usage(stderr);
        return 2;
    }
    if (o->layers && !o->dummy) {
        fprintf(stderr, CMD ": --layers needs --dummy-weights\n");
        return 2;
    }
    if (o->paged && o->compare) {
        fprintf(stderr, CMD ": --paged and --compare-paged exclude each other (the comparison "
                            "runs both)\n");
        return 2;
    }
    return 0;
}

/* The weights: mapped from the checkpoint, or random from its config; all layers, all or
 * --experts routed experts. */
static dsr1_status load(const offline_opts *o, dsr1_ckpt **ck, dsr1_weights **w)
{
    dsr1_model_config cfg;
    dsr1_status st;
    if (o->dummy) {
        if ((st = dsr1_model_config_load(o->model, &cfg)) != DSR1_OK) return st;
        dsr1_model_config_keep_layers(&cfg, o->layers);
    } else {
        if ((st = dsr1_ckpt_open(o->model, ck)) != DSR1_OK) return st;
        cfg = *dsr1_ckpt_config(*ck);
    }
    dsr1_slice slice = dsr1_slice_all(&cfg);
    if (o->experts > cfg.n_routed_experts)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "--experts %d: the model has %d routed experts",
                          o->experts, cfg.n_routed_experts);
    int *ids = NULL;
    if (o->experts) {
        if (!(ids = malloc(sizeof(int) * (size_t)o->experts)))
            return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        for (int i = 0; i < o->experts; i++)
            ids[i] = (int)((long)i * cfg.n_routed_experts / o->experts);
        slice.n_experts = o->experts;
        slice.experts = ids;
    }
    st =
        o->dummy ? dsr1_weights_dummy(&cfg, &slice, o->seed, w) : dsr1_weights_load(*ck, &slice, w);
    free(ids);
    return st;
}

static double linear_bytes(const dsr1_linear *l)
{
    if (!l->data) return 0;
    const double blocks = (double)((l->rows + 127) / 128) * ((l->cols + 127) / 128);
    return (double)l->rows * l->cols * dsr1_dtype_size(l->dtype) +
           (l->scale ? sizeof(float) * blocks : 0);
}

static double linear_macs(const dsr1_linear *l) /* multiply-adds per token */
{
    return l->data ? (double)l->rows * l->cols : 0;
}

static double ffn_macs(const dsr1_ffn_weights *f)
{
    return linear_macs(&f->gate) + linear_macs(&f->up) + linear_macs(&f->down);
}

/* Bytes read and flops of a step of n_tok tokens at mean context ctx, with head_rows rows of
 * logits (see the top of the file). */
static void step_cost(const dsr1_weights *w, int n_tok, int head_rows, double ctx, double *bytes,
                      double *flops)
{
    const dsr1_model_config *c = &w->cfg;
    const int layers = w->layer_end - w->layer_begin, kvw = c->kv_lora_rank + c->qk_rope_head_dim;
    double ex_bytes = 0, ex_macs = 0, macs = 0; /* ex: all held routed experts */
    for (int l = w->layer_begin; l < w->layer_end; l++) {
        const dsr1_layer_weights *L = &w->layers[l];
        macs += linear_macs(&L->q_a) + linear_macs(&L->q_b) + linear_macs(&L->q) +
                linear_macs(&L->kv_a) + linear_macs(&L->kv_b) + linear_macs(&L->o) +
                (L->moe ? linear_macs(&L->router) + ffn_macs(&L->shared) : ffn_macs(&L->dense));
        for (int e = 0; L->moe && e < c->n_routed_experts; e++)
            if (w->expert_owned[e]) {
                const dsr1_ffn_weights *f = &L->experts[e];
                ex_bytes += linear_bytes(&f->gate) + linear_bytes(&f->up) + linear_bytes(&f->down);
                ex_macs += ffn_macs(f);
            }
    }
    /* attention: scores over kv_lora + rope, weighted sums over kv_lora */
    macs += (double)layers * c->num_attention_heads * ctx * (kvw + c->kv_lora_rank);
    const double p1 =
        c->n_routed_experts ? (double)c->num_experts_per_tok / c->n_routed_experts : 0;
    *flops = 2 * (n_tok * (macs + p1 * ex_macs) + head_rows * linear_macs(&w->head));
    *bytes = (double)dsr1_weights_active_bytes(w) + ex_bytes * (1 - pow(1 - p1, n_tok) - p1) +
             n_tok * ctx * layers * kvw * sizeof(float);
}

/* CPU seconds of this process, all threads: what a step costs whatever else the machine runs
 * (its wall time on a busy machine is not comparable between runs). */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int32_t argmax(const float *x, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of x[0 .. n); NaN when n is 0 or memory is short. */
static double median(const double *x, int n)
{
    double *c = n > 0 ? malloc(sizeof(double) * n) : NULL;
    if (!c) return NAN;
    memcpy(c, x, sizeof(double) * n);
    qsort(c, n, sizeof(double), cmp_double);
    const double m = n % 2 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2;
    free(c);
    return m;
}

/* The paged side of a run: the engine's cache size and the block tables, grown as the
 * scheduler grows them (admit.c's grow_blocks: the blocks of a step's positions, taken
 * before the step) from a free list in shuffled order. */
typedef struct {
    int bt, n_blocks, per_seq, n_free;
    int32_t *free_ids; /* popped from the end */
    int32_t *tables;   /* [b][per_seq] */
    int *n_table;      /* [b] blocks held */
} paged_tables;

/* dsr1 serve's default cache size in blocks (backend.c's cache_blocks), or more when the
 * batch's sequences need more. */
static int paged_pool_blocks(const dsr1_model_config *c, int bt, int need)
{
    const int64_t row = (int64_t)(c->kv_lora_rank + c->qk_rope_head_dim) * (int64_t)sizeof(float) *
                        c->num_hidden_layers;
    int64_t tokens = SERVE_KV_TOKENS;
    if (tokens * row > SERVE_KV_BYTES) tokens = SERVE_KV_BYTES / row;
    const int64_t blocks = (tokens + bt - 1) / bt;
    return blocks < need ? need : blocks > 1 << 30 ? 1 << 30 : (int)blocks;
}

static dsr1_status paged_init(paged_tables *p, const dsr1_model_config *c, int bt, int b,
                              int tokens, uint64_t seed)
{
    *p = (paged_tables){.bt = bt, .per_seq = (tokens + bt - 1) / bt};
    p->n_blocks = paged_pool_blocks(c, bt, b * p->per_seq);
    p->free_ids = malloc(sizeof(int32_t) * (size_t)p->n_blocks);
    p->tables = malloc(sizeof(int32_t) * (size_t)b * p->per_seq);
    p->n_table = calloc((size_t)b, sizeof(int));
    if (!p->free_ids || !p->tables || !p->n_table)
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory for %d block tables", b);
    p->n_free = p->n_blocks;
    for (int i = 0; i < p->n_blocks; i++) p->free_ids[i] = i;
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 12345; /* Fisher-Yates */
    for (int i = p->n_blocks - 1; i > 0; i--) {
        const int j = (int)(dsr1__bench_rand(&s) % (uint64_t)(i + 1));
        const int32_t t = p->free_ids[i];
        p->free_ids[i] = p->free_ids[j];
        p->free_ids[j] = t;
    }
    return DSR1_OK;
}

static void paged_free(paged_tables *p)
{
    free(p->free_ids);
    free(p->tables);
    free(p->n_table);
}

/* Blocks for sequence s's first `upto` positions. */
static void paged_grow(paged_tables *p, int s, int upto)
{
    int32_t *t = p->tables + (size_t)s * p->per_seq;
    while (p->n_table[s] * p->bt < upto) t[p->n_table[s]++] = p->free_ids[--p->n_free];
}

/* One step of every sequence: n_tokens each from tokens[s * stride] at position pos;
 * seconds in *sec, the next tokens in next[] (greedy: argmax here, or drawn in the engine
 * with paged tables, as the scheduler asks for them; `index` is the drawn token's). */
static dsr1_status step(dsr1_engine *e, paged_tables *pt, int b, int pos, int n_tokens,
                        const int32_t *tokens, int stride, dsr1_seq_step *seqs,
                        dsr1_seq_sample *smp, dsr1_sample_result *res, float *logits, int vocab,
                        uint64_t index, int32_t *next, double *sec, double *cpu)
{
    for (int s = 0; s < b; s++) {
        seqs[s] = (dsr1_seq_step){.slot = s,
                                  .pos = pos,
                                  .n_tokens = n_tokens,
                                  .tokens = tokens + (size_t)s * stride,
                                  .logits = DSR1_LOGITS_LAST};
        if (pt) {
            paged_grow(pt, s, pos + n_tokens);
            seqs[s].blocks = pt->tables + (size_t)s * pt->per_seq;
            seqs[s].n_blocks = pt->n_table[s];
            smp[s] = (dsr1_seq_sample){.params = dsr1_sampling_defaults(), .step = index};
            smp[s].params.temperature = 0;
            seqs[s].sample = &smp[s];
        }
    }
    const dsr1_batch batch = {
        .n_seqs = b, .seqs = seqs, .logits = pt ? NULL : logits, .samples = pt ? res : NULL};
    const double t0 = dsr1_now(), c0 = cpu_now();
    const dsr1_status st = dsr1_engine_forward(e, &batch);
    *sec = dsr1_now() - t0;
    *cpu += cpu_now() - c0;
    for (int s = 0; st == DSR1_OK && s < b; s++)
        next[s] = pt ? res[s].token : argmax(logits + (size_t)s * vocab, vocab);
    return st;
}

static dsr1_status run_batch(const offline_opts *o, const dsr1_weights *w, const dsr1_kernels *k,
                             dsr1_pool *pool, int b, bool paged, offline_row *row)
{
    const int vocab = w->cfg.vocab_size, in = o->input_len, out_len = o->output_len;
    dsr1_engine *e = NULL;
    paged_tables pt = {0};
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)b * in), *next = malloc(sizeof(int32_t) * b);
    dsr1_seq_step *seqs = malloc(sizeof(*seqs) * b);
    dsr1_seq_sample *smp = malloc(sizeof(*smp) * b);
    dsr1_sample_result *res = malloc(sizeof(*res) * b);
    float *logits = paged ? NULL : malloc(sizeof(float) * (size_t)b * vocab);
    double *step_s = calloc((size_t)out_len + 1, sizeof(double)); /* + 1: never empty */
    int32_t *drawn = malloc(sizeof(int32_t) * ((size_t)out_len + 1) * b);
    *row = (offline_row){b, paged, .step_s = step_s, .tokens = drawn};
    dsr1_status st = DSR1_OK;
    if (!prompt || !next || !seqs || !smp || !res || (!paged && !logits) || !step_s || !drawn)
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory for batch %d", b);
    if (st == DSR1_OK && paged) {
        st = paged_init(&pt, &w->cfg, o->block_tokens, b, in + out_len, o->seed);
        /* dsr1 serve's step budget; the engine's scratch follows the step's tokens */
        if (st == DSR1_OK)
            st = dsr1_engine_create_paged(w, k, pool, pt.n_blocks, pt.bt,
                                          b * in > 512 ? b * in : 512, &e);
    } else if (st == DSR1_OK) {
        st = dsr1_engine_create(w, k, pool, b, in + out_len, &e);
    }
    if (st != DSR1_OK) goto out;
    paged_tables *ptp = paged ? &pt : NULL;
    uint64_t s = o->seed * 0x9e3779b97f4a7c15ull + (uint64_t)b;
    for (size_t i = 0; i < (size_t)b * in; i++) prompt[i] = (int32_t)(dsr1__bench_rand(&s) % vocab);
    double t, tc = 0;
    fprintf(stderr, "batch %d%s: warm-up, prefill of %d x %d tokens ...\n", b,
            paged ? " (paged)" : "", b, in);
    if ((st = step(e, ptp, b, 0, 1, prompt, in, seqs, smp, res, logits, vocab, 0, next, &t, &tc)))
        goto out;
    if ((st = step(e, ptp, b, 0, in, prompt, in, seqs, smp, res, logits, vocab, 0, next,
                   &row->prefill_s, &row->prefill_cpu_s)))
        goto out;
    memcpy(drawn, next, sizeof(int32_t) * b);
    fprintf(stderr, "batch %d%s: %d decode steps ...\n", b, paged ? " (paged)" : "", out_len);
    for (int i = 0; i < out_len; i++) {
        if ((st = step(e, ptp, b, in + i, 1, next, 1, seqs, smp, res, logits, vocab,
                       (uint64_t)i + 1, next, &row->step_s[i], &row->decode_cpu_s)))
            goto out;
        row->decode_s += row->step_s[i];
        memcpy(drawn + (size_t)(i + 1) * b, next, sizeof(int32_t) * b);
    }
    row->step_median_s = median(row->step_s, out_len);
    double unused;
    step_cost(w, b * in, b, (in + 1) / 2.0, &unused, &row->prefill_flops);
    step_cost(w, b, b, in + (out_len + 1) / 2.0, &row->step_bytes, &row->step_flops);
out:
    dsr1_engine_destroy(e);
    paged_free(&pt);
    free(prompt);
    free(next);
    free(seqs);
    free(smp);
    free(res);
    free(logits);
    return st;
}

/* Output tokens over the prefill and decode time: the work of serving the batch's requests
 * (SGLang's bench_one_batch reports it as the total throughput, with the input tokens). */
static double e2e_tok_s(const offline_opts *o, const offline_row *r)
{
    const double t = r->prefill_s + r->decode_s;
    return t > 0 ? (double)r->batch * o->output_len / t : 0;
}

static double cpu_per_token(const offline_opts *o, const offline_row *r)
{
    return (r->prefill_cpu_s + r->decode_cpu_s) / ((double)r->batch * o->output_len);
}

/* Whether two runs of the same batch drew the same tokens after prefill and every step. */
static bool same_tokens(const offline_opts *o, const offline_row *a, const offline_row *b)
{
    return !memcmp(a->tokens, b->tokens, sizeof(int32_t) * ((size_t)o->output_len + 1) * a->batch);
}

/* --compare-paged: per batch size, the paged run over the slots run of each pair (speed:
 * > 1 when paged is faster), in wall time (e2e out, decode) and in CPU time (per output token
 * over prefill + decode, and decode alone), their medians, and whether every run drew the
 * same tokens. Printed, or added to `json` (an array) when it is not NULL. */
static void compare_report(const offline_opts *o, const offline_row *rows, int n, json_t *json)
{
    enum { E2E, DEC, CPU, CPU_DEC, N_RATIOS };
    static const char *const names[N_RATIOS] = {"e2e_wall", "decode_wall", "cpu", "decode_cpu"};
    for (int i = 0; i < n; i++) {
        if (rows[i].round != 1 || rows[i].paged) continue; /* once per batch size */
        const int b = rows[i].batch;
        double *ratio[N_RATIOS];
        int np = 0;
        bool same = true;
        for (int r = 0; r < N_RATIOS; r++) ratio[r] = calloc((size_t)o->compare, sizeof(double));
        if (!ratio[0] || !ratio[1] || !ratio[2] || !ratio[3]) goto next;
        if (!json) printf("batch %d, paged / slots (speed; same process, alternating):\n", b);
        for (int r = 1; r <= o->compare; r++) {
            const offline_row *sl = NULL, *pg = NULL;
            for (int j = 0; j < n; j++)
                if (rows[j].batch == b && rows[j].round == r)
                    *(rows[j].paged ? &pg : &sl) = &rows[j];
            if (!sl || !pg) continue;
            same = same && same_tokens(o, &rows[i], sl) && same_tokens(o, &rows[i], pg);
            ratio[E2E][np] = e2e_tok_s(o, pg) / e2e_tok_s(o, sl);
            ratio[DEC][np] = sl->decode_s / pg->decode_s;
            ratio[CPU][np] = cpu_per_token(o, sl) / cpu_per_token(o, pg);
            ratio[CPU_DEC][np] = sl->decode_cpu_s / pg->decode_cpu_s;
            if (!json)
                printf("  pair %d: e2e %.3f, decode %.3f (wall); CPU s per output token %.4f / "
                       "%.4f: %.3f, decode CPU %.3f\n",
                       r, ratio[E2E][np], ratio[DEC][np], cpu_per_token(o, pg),
                       cpu_per_token(o, sl), ratio[CPU][np], ratio[CPU_DEC][np]);
            np++;
        }
        if (json) {
            json_t *m = json_pack("{s:i,s:i,s:b}", "batch", b, "pairs", np, "same_tokens", same);
            for (int r = 0; r < N_RATIOS; r++)
                json_object_set_new(m, names[r], json_real(median(ratio[r], np)));
            json_array_append_new(json, m);
        } else {
            printf("  median of %d: e2e %.3f, decode %.3f (wall); CPU %.3f, decode CPU %.3f; "
                   "tokens %s\n",
                   np, median(ratio[E2E], np), median(ratio[DEC], np), median(ratio[CPU], np),
                   median(ratio[CPU_DEC], np),
                   same ? "identical in every run" : "DIFFER between runs");
        }
    next:
        for (int r = 0; r < N_RATIOS; r++) free(ratio[r]);
    }
}

static void report(const offline_opts *o, const dsr1_weights *w, const dsr1_kernels *k, int threads,
                   const offline_limits *lim, const offline_row *rows, int n)
{
    const dsr1_model_config *c = &w->cfg;
    const int moe = c->num_hidden_layers - c->first_k_dense_replace;
    printf("dsr1-bench offline: %s%s (%d layers, %d MoE; %d of %d routed experts held, %.2f GB), "
           "kernels %s, %d threads\n",
           o->model, o->dummy ? " (dummy weights)" : "", c->num_hidden_layers, moe, w->n_owned,
           c->n_routed_experts, w->bytes / 1e9, k->name, threads);
    if (o->paged || o->compare)
        printf(
            "%s: paged cache as dsr1 serve's (%d blocks of %d tokens, block tables grown a block "
            "at a time from a shuffled free list, greedy draw in the engine)%s\n",
            o->compare ? "paged runs" : "engine", paged_pool_blocks(c, o->block_tokens, 0),
            o->block_tokens,
            o->compare ? "; slots runs: one cache slot per sequence, argmax after the step" : "");
    printf("input %d, output %d tokens per sequence; streaming read %.1f GB/s (before %.1f, after "
           "%.1f); fp32 FMA peak %.1f GFLOP/s (before %.1f, after %.1f)\n",
           o->input_len, o->output_len, lim->bw, lim->bw0, lim->bw1, lim->peak, lim->peak0,
           lim->peak1);
    const char *run = o->compare ? "run      " : "";
    printf("%s%5s %9s %9s %6s %8s %9s %8s %7s %9s %9s %7s %7s %8s\n", run, "", "prefill", "prefill",
           "%FMA", "decode", "step ms", "GB", "GFLOP", "BW roof", "FMA roof", "decode", "decode",
           "e2e out");
    printf("%s%5s %9s %9s %6s %8s %9s %8s %7s %9s %9s %7s %7s %8s\n", o->compare ? "         " : "",
           "batch", "s", "tok/s", "", "tok/s", "(median)", "/step", "/step", "ms", "ms", "/BW roof",
           "/roof", "tok/s");
    for (int i = 0; i < n; i++) {
        const offline_row *r = &rows[i];
        const double bwr = r->step_bytes / (lim->bw * 1e9), fr = r->step_flops / (lim->peak * 1e9);
        if (o->compare) printf("%-5s %-3d", r->paged ? "paged" : "slots", r->round);
        printf("%5d %9.3f %9.1f %5.1f%% %8.2f %9.2f %8.3f %7.1f %9.2f %9.2f %7.3f %7.3f %8.2f\n",
               r->batch, r->prefill_s, (double)r->batch * o->input_len / r->prefill_s,
               100 * r->prefill_flops / r->prefill_s / (lim->peak * 1e9),
               r->decode_s > 0 ? (double)r->batch * o->output_len / r->decode_s : 0,
               r->step_median_s * 1e3, r->step_bytes / 1e9, r->step_flops / 1e9, bwr * 1e3,
               fr * 1e3, bwr / r->step_median_s, fmax(bwr, fr) / r->step_median_s, e2e_tok_s(o, r));
    }
    printf("(decode / BW roof: decode speed as a fraction of the bandwidth roofline, i.e. its "
           "time over the median step; decode / roof: of the slower of the two rooflines; e2e "
           "out: batch x output-len over prefill + decode time, what serving the same requests "
           "could give)\n");
    if (fmin(lim->bw0, lim->bw1) < 0.85 * lim->bw ||
        fmin(lim->peak0, lim->peak1) < 0.85 * lim->peak)
        printf("note: the limits moved by more than 15%% during the run: the machine was busy "
               "(the rooflines use the larger values)\n");
    if (o->compare) compare_report(o, rows, n, NULL);
}

static int write_json(const offline_opts *o, const dsr1_weights *w, const dsr1_kernels *k,
                      int threads, const offline_limits *lim, const offline_row *rows, int n)
{
    json_t *root = json_pack(
        "{s:s,s:b,s:i,s:i,s:s,s:i,s:i,s:i,s:f,s:[f,f],s:f,s:[f,f],s:f}", "model", o->model,
        "dummy_weights", o->dummy, "layers", w->cfg.num_hidden_layers, "experts_held", w->n_owned,
        "kernels", k->name, "threads", threads, "input_len", o->input_len, "output_len",
        o->output_len, "read_gbps", lim->bw, "read_gbps_before_after", lim->bw0, lim->bw1,
        "fma_peak_gflops", lim->peak, "fma_peak_gflops_before_after", lim->peak0, lim->peak1,
        "weights_gb", w->bytes / 1e9);
    if (o->paged || o->compare) {
        json_object_set_new(root, "block_tokens", json_integer(o->block_tokens));
        json_object_set_new(root, "cache_blocks",
                            json_integer(paged_pool_blocks(&w->cfg, o->block_tokens, 0)));
    }
    json_t *jr = json_array();
    for (int i = 0; i < n; i++) {
        const offline_row *r = &rows[i];
        const double bwr = r->step_bytes / (lim->bw * 1e9), fr = r->step_flops / (lim->peak * 1e9);
        json_t *steps = json_array();
        for (int s = 0; s < o->output_len; s++)
            json_array_append_new(steps, json_real(r->step_s[s]));
        json_array_append_new(
            jr,
            json_pack("{s:i,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:o}", "batch",
                      r->batch, "prefill_seconds", r->prefill_s, "prefill_tok_s",
                      (double)r->batch * o->input_len / r->prefill_s, "prefill_flops",
                      r->prefill_flops, "decode_seconds", r->decode_s, "decode_tok_s",
                      r->decode_s > 0 ? (double)r->batch * o->output_len / r->decode_s : 0,
                      "step_median_seconds", isnan(r->step_median_s) ? 0 : r->step_median_s,
                      "step_bytes", r->step_bytes, "step_flops", r->step_flops,
                      "bandwidth_roofline_seconds", bwr, "fma_roofline_seconds", fr,
                      "e2e_output_tok_s", e2e_tok_s(o, r), "prefill_cpu_seconds", r->prefill_cpu_s,
                      "decode_cpu_seconds", r->decode_cpu_s, "step_seconds", steps));
        json_t *jrow = json_array_get(jr, json_array_size(jr) - 1);
        json_object_set_new(jrow, "cache", json_string(r->paged ? "paged" : "slots"));
        if (o->compare) json_object_set_new(jrow, "round", json_integer(r->round));
    }
    json_object_set_new(root, "results", jr);
    if (o->compare) {
        json_t *cmp = json_array();
        compare_report(o, rows, n, cmp);
        json_object_set_new(root, "paged_over_slots", cmp);
    }
    const int rc = json_dump_file(root, o->json, JSON_INDENT(2));
    if (rc) fprintf(stderr, CMD ": cannot write %s\n", o->json);
    json_decref(root);
    return rc ? 1 : 0;
}

/* Read bandwidth and FMA peak, `after` the runs or before them. */
static void measure_limits(dsr1_pool *pool, offline_limits *lim, bool after)
{
    fprintf(stderr, "machine limits%s ...\n", after ? " again" : "");
    const double bw = dsr1__bench_read_gbps(pool, (size_t)1 << 30, 5);
    const double peak = dsr1__bench_fma_gflops(pool, 10);
    *(after ? &lim->bw1 : &lim->bw0) = bw;
    *(after ? &lim->peak1 : &lim->peak0) = peak;
    lim->bw = fmax(lim->bw0, lim->bw1);
    lim->peak = fmax(lim->peak0, lim->peak1);
}

int dsr1__bench_offline(int argc, char **argv)
{
    offline_opts o;
    const int prc = parse(argc, argv, &o);
    if (prc) return prc == 1 ? 0 : 2;
    const dsr1_kernels *k = dsr1_kernels_select(o.kernels);
    if (!k) {
        fprintf(stderr,
                CMD ": --kernels: '%s' is unknown or not supported by this CPU (auto, portable, "
                    "avx512)\n",
                o.kernels);
        return 2;
    }
    int rc = 1, done = 0;
    dsr1_ckpt *ck = NULL;
    dsr1_weights *w = NULL;
    dsr1_pool *pool = NULL;
    /* --compare-paged N: N pairs per batch size, the order alternating (slots first in odd
     * pairs) so that a trend in the machine's load weighs on both alike */
    const int per_batch = o.compare ? 2 * o.compare : 1;
    offline_row *rows = calloc((size_t)o.nbatch * per_batch, sizeof(*rows));
    offline_limits lim = {0};
    dsr1_status st =
        rows ? dsr1_pool_create(o.threads, &pool) : dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    if (st == DSR1_OK) st = load(&o, &ck, &w);
    if (st != DSR1_OK) goto out;
    measure_limits(pool, &lim, false);
    for (int i = 0; i < o.nbatch * per_batch; i++, done++) {
        const int pair = i % per_batch / 2;
        const bool paged = o.compare ? (i % 2 == 1) == (pair % 2 == 0) : o.paged;
        if ((st = run_batch(&o, w, k, pool, o.batch[i / per_batch], paged, &rows[i])) != DSR1_OK) {
            done++; /* its row holds memory to free */
            goto out;
        }
        rows[i].round = o.compare ? pair + 1 : 0;
    }
    measure_limits(pool, &lim, true);
    if (lim.bw <= 0 || lim.peak <= 0) {
        st = dsr1_error(DSR1_ERR_UNSUPPORTED,
                        "cannot measure this machine's limits (memory for the bandwidth test, "
                        "AVX-512 for the FMA peak)");
        goto out;
    }
    report(&o, w, k, dsr1_pool_size(pool), &lim, rows, done);
    rc = o.json ? write_json(&o, w, k, dsr1_pool_size(pool), &lim, rows, done) : 0;
out:
    if (st != DSR1_OK) fprintf(stderr, CMD ": %s\n", dsr1_errmsg());
    for (int i = 0; i < done; i++) {
        free(rows[i].step_s);
        free(rows[i].tokens);
    }
    free(rows);
    dsr1_weights_destroy(w);
    dsr1_ckpt_close(ck);
    dsr1_pool_destroy(pool);
    return rc;
}
