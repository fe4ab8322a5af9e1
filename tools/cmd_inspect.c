/* `dsr1 inspect`: what a checkpoint is and what it costs to serve.
 *
 * Prints the config in one paragraph, parameter counts (total, main model, MTP, activated
 * per token, per kind), a dtype census, and the memory each of N workers needs under expert
 * parallelism (routed experts in balanced contiguous blocks, R copies of each with
 * --expert-replicas R, the rest replicated). Works on a
 * checkpoint directory (tensors from its safetensors headers, checked against the tensor plan of
 * its config: missing, unknown or mis-shaped tensors are reported and make the exit status 1) or on
 * a config.json alone (tensors from the plan), e.g. the full R1 config. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "census.h"
#include "ckpt.h"
#include "args.h"
#include "commands.h"
#include "model_config.h"
#include "placement.h"
#include "tensor_plan.h"

#define MAX_WORKER_COUNTS 16

typedef struct {
    const char *source; /* the directory or config file */
    int nshards;        /* 0 for a config alone */
    const dsr1_model_config *cfg;
    const dsr1_census *cs;
    int nworkers[MAX_WORKER_COUNTS], nw;
    int replicas; /* copies of every routed expert */
} report;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsr1 inspect (--model DIR | --config FILE) [--workers N] "
            "[--expert-replicas R] [--json]\n\n"
            "Summarise a DeepSeek-V3/R1 checkpoint: config, parameter counts (total, per "
            "kind,\nactivated per token), tensors per dtype, and memory per worker when the "
            "routed\nexperts are spread over N workers (contiguous blocks) and the rest is "
            "replicated.\n\n"
            "  --model DIR     a checkpoint directory (config.json, index, shards); its tensors\n"
            "                  are checked against the layout its config implies\n"
            "  --config FILE   a config.json alone: counts from the layout it implies\n"
            "  --workers N     memory for N workers (repeatable; default 1, 2, 4, 8, those\n"
            "                  of them with at least R workers)\n"
            "  --expert-replicas R\n"
            "                  R copies of every routed expert on different workers (default\n"
            "                  1), as `dsr1 serve --expert-replicas R` places them\n"
            "  --json          machine-readable output\n\n"
            "exit status: 0 ok, 1 error or a checkpoint that does not match its config, 2 usage\n");
}

static const char *human(double v, const char *unit, char *buf, size_t len)
{
    static const char *const pre[] = {"", "K", "M", "G", "T"};
    int i = 0;
    while (v >= 1000.0 && i < 4) v /= 1000.0, i++;
    if (i)
        snprintf(buf, len, "%.2f %s%s", v, pre[i], unit);
    else
        snprintf(buf, len, *unit ? "%.0f %s" : "%.0f%s", v, unit);
    return buf;
}

static void print_config(const dsr1_model_config *c)
{
    int moe = c->num_hidden_layers - c->first_k_dense_replace;
    printf("config: hidden %d, %d layers (%d dense, %d MoE) + %d MTP, %d heads, vocab %d\n",
           c->hidden_size, c->num_hidden_layers, c->first_k_dense_replace, moe < 0 ? 0 : moe,
           c->num_nextn_predict_layers, c->num_attention_heads, c->vocab_size);
    printf("  MLA: q_lora %d, kv_lora %d, head dims nope %d + rope %d, v %d\n", c->q_lora_rank,
           c->kv_lora_rank, c->qk_nope_head_dim, c->qk_rope_head_dim, c->v_head_dim);
    printf("  FFN: dense %d; MoE %d routed experts of %d (%d per token, %d groups, top %d) "
           "+ %d shared, scaling %.3g\n",
           c->intermediate_size, c->n_routed_experts, c->moe_intermediate_size,
           c->num_experts_per_tok, c->n_group, c->topk_group, c->n_shared_experts,
           (double)c->routed_scaling_factor);
    if (c->rope_type == DSR1_ROPE_YARN)
        printf("  RoPE: theta %g, YaRN factor %g from %d, beta %g/%g; weights %s\n", c->rope_theta,
               c->rope_factor, c->rope_original_max_position_embeddings, c->rope_beta_fast,
               c->rope_beta_slow, c->fp8 ? "FP8 e4m3, 128x128 blocks" : "");
    else
        printf("  RoPE: theta %g; weights %s\n", c->rope_theta,
               c->fp8 ? "FP8 e4m3, 128x128 blocks" : "");
}

/* What each of n workers loads (bytes[n]) with r->replicas copies of every routed expert,
 * placed as the engine places them, and the routed experts per layer it holds (experts[n]).
 * Non-zero: out of memory. */
static int per_worker(const report *r, int n, uint64_t *bytes, int *experts)
{
    const dsr1_census *cs = r->cs;
    const int ne = cs->nexperts;
    if (ne == 0) {
        for (int w = 0; w < n; w++) {
            bytes[w] = dsr1_census_worker_bytes(cs, n, w);
            experts[w] = 0;
        }
        return 0;
    }
    int *owners = malloc(sizeof(int) * (size_t)ne * (size_t)r->replicas);
    if (!owners || dsr1_placement_replicated(ne, n, r->replicas, NULL, owners) != DSR1_OK) {
        free(owners);
        return -1;
    }
    for (int w = 0; w < n; w++) {
        bytes[w] = dsr1_census_worker_bytes_placed(cs, owners, r->replicas, w);
        experts[w] = dsr1_placement_count(owners, ne, r->replicas, w);
    }
    free(owners);
    return 0;
}

static int print_text(const report *r)
{
    const dsr1_census *cs = r->cs;
    char a[32], b[32];
    if (r->nshards)
        printf("checkpoint %s: %d shard%s, %llu tensors\n", r->source, r->nshards,
               r->nshards == 1 ? "" : "s", (unsigned long long)cs->tensors);
    else
        printf("config %s: %llu tensors planned\n", r->source, (unsigned long long)cs->tensors);
    print_config(r->cfg);
    printf("\nparameters (weights; scale_inv not counted):\n");
    printf("  total      %14llu  (%s), %s of tensors\n", (unsigned long long)cs->all.params,
           human((double)cs->all.params, "", a, sizeof(a)),
           human((double)cs->all.bytes, "B", b, sizeof(b)));
    printf("  main model %14llu  (%s)\n", (unsigned long long)cs->main.params,
           human((double)cs->main.params, "", a, sizeof(a)));
    printf("  MTP        %14llu  (%s)\n", (unsigned long long)cs->mtp.params,
           human((double)cs->mtp.params, "", a, sizeof(a)));
    uint64_t act = dsr1_census_activated(cs, r->cfg);
    printf("  activated  %14llu  (%s) per token: non-expert + %d routed experts per MoE layer\n",
           (unsigned long long)act, human((double)act, "", a, sizeof(a)),
           r->cfg->num_experts_per_tok);
    printf("\n  %-14s %16s %12s\n", "kind", "parameters", "bytes");
    for (int k = 0; k < DSR1_TK_COUNT; k++)
        if (cs->kind[k].bytes)
            printf("  %-14s %16llu %12s\n", dsr1_tensor_kind_name((dsr1_tensor_kind)k),
                   (unsigned long long)cs->kind[k].params,
                   human((double)cs->kind[k].bytes, "B", a, sizeof(a)));
    printf("\n  %-14s %16s %12s\n", "dtype", "tensors", "bytes");
    for (int d = 0; d < DSR1_DT_COUNT; d++)
        if (cs->dtype_count[d])
            printf("  %-14s %16llu %12s\n", dsr1_dtype_name((dsr1_dtype)d),
                   (unsigned long long)cs->dtype_count[d],
                   human((double)cs->dtype_bytes[d], "B", a, sizeof(a)));
    printf("  (of which FP8 block scales: %s)\n",
           human((double)cs->scale_bytes, "B", a, sizeof(a)));
    if (r->replicas > 1)
        printf("\nmemory per worker (main layers; %d copies of every routed expert on different "
               "workers, the rest replicated: %s):\n",
               r->replicas,
               human((double)(cs->replicated_bytes - cs->mtp_replicated_bytes), "B", a, sizeof(a)));
    else
        printf("\nmemory per worker (main layers; routed experts in contiguous blocks, the rest "
               "replicated: %s):\n",
               human((double)(cs->replicated_bytes - cs->mtp_replicated_bytes), "B", a, sizeof(a)));
    printf("  %7s %12s %12s %12s%s\n", "workers", "max", "min", "all workers",
           r->replicas > 1 ? "  experts" : "");
    for (int i = 0; i < r->nw; i++) {
        const int n = r->nworkers[i];
        uint64_t *v = malloc(sizeof(uint64_t) * (size_t)n);
        int *ex = malloc(sizeof(int) * (size_t)n);
        if (!v || !ex || per_worker(r, n, v, ex) != 0) {
            free(v);
            free(ex);
            return -1;
        }
        uint64_t mx = 0, mn = UINT64_MAX, sum = 0;
        int exmax = 0;
        for (int w = 0; w < n; w++) {
            mx = v[w] > mx ? v[w] : mx;
            mn = v[w] < mn ? v[w] : mn;
            sum += v[w];
            exmax = ex[w] > exmax ? ex[w] : exmax;
        }
        free(v);
        free(ex);
        char c[32];
        printf("  %7d %12s %12s %12s", n, human((double)mx, "B", a, sizeof(a)),
               human((double)mn, "B", b, sizeof(b)), human((double)sum, "B", c, sizeof(c)));
        if (r->replicas > 1) printf(" %8d", exmax);
        printf("\n");
    }
    uint64_t missing = dsr1_census_missing(cs);
    if (missing || cs->unknown || cs->mismatched)
        printf("\nWARNING: %llu planned tensors missing, %llu unknown, %llu with another "
               "dtype/shape than the config implies\n",
               (unsigned long long)missing, (unsigned long long)cs->unknown,
               (unsigned long long)cs->mismatched);
    return 0;
}

static json_t *sum_json(const dsr1_census_sum *s)
{
    return json_pack("{s:I, s:I}", "params", (json_int_t)s->params, "bytes", (json_int_t)s->bytes);
}

static int print_json(const report *r)
{
    const dsr1_census *cs = r->cs;
    const dsr1_model_config *c = r->cfg;
    json_t *kinds = json_object(), *dtypes = json_object(), *workers = json_array();
    for (int k = 0; k < DSR1_TK_COUNT; k++)
        json_object_set_new(kinds, dsr1_tensor_kind_name((dsr1_tensor_kind)k),
                            sum_json(&cs->kind[k]));
    for (int d = 0; d < DSR1_DT_COUNT; d++)
        if (cs->dtype_count[d])
            json_object_set_new(dtypes, dsr1_dtype_name((dsr1_dtype)d),
                                json_pack("{s:I, s:I}", "tensors", (json_int_t)cs->dtype_count[d],
                                          "bytes", (json_int_t)cs->dtype_bytes[d]));
    for (int i = 0; i < r->nw; i++) {
        const int n = r->nworkers[i];
        uint64_t *v = malloc(sizeof(uint64_t) * (size_t)n);
        int *ex = malloc(sizeof(int) * (size_t)n);
        if (!v || !ex || per_worker(r, n, v, ex) != 0) {
            free(v);
            free(ex);
            json_decref(kinds);
            json_decref(dtypes);
            json_decref(workers);
            return -1;
        }
        json_t *per = json_array(), *pex = json_array();
        for (int w = 0; w < n; w++) {
            json_array_append_new(per, json_integer((json_int_t)v[w]));
            json_array_append_new(pex, json_integer(ex[w]));
        }
        free(v);
        free(ex);
        json_array_append_new(workers, json_pack("{s:i, s:i, s:o, s:o}", "workers", n,
                                                 "expert_replicas", r->replicas, "bytes_per_worker",
                                                 per, "experts_per_worker", pex));
    }
    json_t *o = json_pack(
        "{s:s, s:i, s:{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i}, s:o, s:o, s:o, s:I, s:o, "
        "s:o, s:I, s:I, s:o, s:{s:I, s:I, s:I}}",
        "source", r->source, "shards", r->nshards, "config", "hidden_size", c->hidden_size,
        "num_hidden_layers", c->num_hidden_layers, "first_k_dense_replace",
        c->first_k_dense_replace, "num_nextn_predict_layers", c->num_nextn_predict_layers,
        "num_attention_heads", c->num_attention_heads, "n_routed_experts", c->n_routed_experts,
        "num_experts_per_tok", c->num_experts_per_tok, "moe_intermediate_size",
        c->moe_intermediate_size, "vocab_size", c->vocab_size, "total", sum_json(&cs->all), "main",
        sum_json(&cs->main), "mtp", sum_json(&cs->mtp), "activated_params",
        (json_int_t)dsr1_census_activated(cs, c), "kinds", kinds, "dtypes", dtypes, "scale_bytes",
        (json_int_t)cs->scale_bytes, "replicated_bytes", (json_int_t)cs->replicated_bytes,
        "workers", workers, "check", "missing", (json_int_t)dsr1_census_missing(cs), "unknown",
        (json_int_t)cs->unknown, "mismatched", (json_int_t)cs->mismatched);
    if (!o) return -1;
    char *s = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!s) return -1;
    printf("%s\n", s);
    free(s);
    return 0;
}

int dsr1_cmd_inspect(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"config", required_argument, 0, 'c'},
                                         {"workers", required_argument, 0, 'w'},
                                         {"json", no_argument, 0, 'J'},
                                         {"expert-replicas", required_argument, 0, 'r'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL, *config = NULL;
    int json = 0, c;
    report r = {.replicas = 1};
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'c':
            config = optarg;
            break;
        case 'J':
            json = 1;
            break;
        case 'w': {
            long v;
            if (dsr1_arg_long("dsr1 inspect", "--workers", optarg, 1, 65536, &v)) return 2;
            if (r.nw == MAX_WORKER_COUNTS) {
                fprintf(stderr, "dsr1 inspect: --workers given more than %d times\n",
                        MAX_WORKER_COUNTS);
                return 2;
            }
            r.nworkers[r.nw++] = (int)v;
            break;
        }
        case 'r': {
            long v;
            if (dsr1_arg_long("dsr1 inspect", "--expert-replicas", optarg, 1, 65536, &v)) return 2;
            r.replicas = (int)v;
            break;
        }
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc || !model == !config) {
        fprintf(stderr, "dsr1 inspect: give exactly one of --model and --config\n\n");
        usage(stderr);
        return 2;
    }
    for (int i = 0; i < r.nw; i++)
        if (r.nworkers[i] < r.replicas) {
            fprintf(stderr,
                    "dsr1 inspect: --workers %d: fewer workers than --expert-replicas %d "
                    "(the copies of an expert are on different workers)\n",
                    r.nworkers[i], r.replicas);
            return 2;
        }
    if (!r.nw) {
        static const int def[] = {1, 2, 4, 8};
        for (int i = 0; i < 4; i++)
            if (def[i] >= r.replicas) r.nworkers[r.nw++] = def[i];
        if (!r.nw) r.nworkers[r.nw++] = r.replicas;
    }

    dsr1_ckpt *ck = NULL;
    dsr1_model_config cfg;
    dsr1_tensor_plan plan = {0};
    dsr1_census cs = {0};
    int rc = 1;
    dsr1_status st;
    if (model) {
        st = dsr1_ckpt_open(model, &ck);
        if (st == DSR1_OK) cfg = *dsr1_ckpt_config(ck);
    } else {
        st = dsr1_model_config_load(config, &cfg);
    }
    if (st == DSR1_OK) st = dsr1_tensor_plan_build(&cfg, &plan);
    if (st == DSR1_OK) st = dsr1_census_init(&cs, &cfg, &plan);
    if (st != DSR1_OK) {
        fprintf(stderr, "dsr1 inspect: %s\n", dsr1_errmsg());
        goto out;
    }
    if (ck) {
        for (size_t i = 0; i < dsr1_ckpt_tensor_count(ck); i++) {
            const dsr1_st_tensor *t = dsr1_ckpt_tensor_at(ck, i);
            dsr1_census_add(&cs, t->name, t->dtype, t->ndim, t->shape, t->nbytes);
        }
    } else {
        dsr1_census_add_plan(&cs);
    }
    r.source = model ? model : config;
    r.nshards = ck ? dsr1_ckpt_shard_count(ck) : 0;
    r.cfg = &cfg;
    r.cs = &cs;
    if (json) {
        if (print_json(&r) != 0) {
            fprintf(stderr, "dsr1 inspect: out of memory\n");
            goto out;
        }
    } else if (print_text(&r) != 0) {
        fprintf(stderr, "dsr1 inspect: out of memory\n");
        goto out;
    }
    rc = dsr1_census_missing(&cs) || cs.unknown || cs.mismatched ? 1 : 0;
out:
    dsr1_census_free(&cs);
    dsr1_tensor_plan_free(&plan);
    if (ck) dsr1_ckpt_close(ck);
    return rc;
}
