/* Writing a random checkpoint directory (see mkmodel.h): shard split, the generate-and-write
 * pipeline, index and config files. The tokenizer files are in mkmodel_tokenizer.c. */
#include "mkmodel.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "progress.h"
#include "randw.h"
#include "st_writer.h"
#include "tensor_plan.h"

#define PIECE_BYTES (4u << 20) /* generation unit: big enough to amortise, small in memory */
#define JSON_FLAGS  (JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15))

typedef struct {
    int tensor, shard;
    int64_t u0, u1; /* block rows of an FP8 weight, or elements of a BF16/F32 tensor */
    uint64_t bytes;
} piece;

typedef struct {
    const dsr1_tensor_plan *plan;
    const dsr1_randw *rw;
    piece *pieces;
    size_t npieces;
    float *scales;  /* scale_inv of every FP8 weight, filled as its block rows are made */
    uint64_t *soff; /* per tensor: offset of its scales in `scales` */
    uint8_t *slots;
    size_t slot_bytes;
    int nslots;
    int64_t *ready; /* per slot: the piece it holds, ready to write; -1: none */
    size_t next, written;
    bool stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} job;

/* ---- config.json / generation_config.json ---- */

/* The shortest decimal that reads back as the same float (1e-6f -> 1e-06, not 9.99e-07). */
static json_t *json_float(float v)
{
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    return json_real(strtod(buf, NULL));
}

/* Integral values as integers, as the published config writes factor 40, beta_fast 32. */
static json_t *json_num(double v)
{
    if (v == floor(v) && fabs(v) < 1e15) return json_integer((json_int_t)v);
    return json_real(v);
}

dsr1_status dsr1_mkmodel_config_json(const dsr1_model_config *c, char **out)
{
    json_t *o = json_pack(
        "{s:[s], s:b, s:f, s:{s:s, s:s, s:s}, s:i, s:i, s:i, s:i, s:s, s:i, s:f, s:i, s:i, s:i, "
        "s:s, s:i, s:i, s:i, s:i, s:i, s:b, s:i, s:i, s:i, s:i, s:i, s:i}",
        "architectures", "DeepseekV3ForCausalLM", "attention_bias", 0, "attention_dropout", 0.0,
        "auto_map", "AutoConfig", "configuration_deepseek.DeepseekV3Config", "AutoModel",
        "modeling_deepseek.DeepseekV3Model", "AutoModelForCausalLM",
        "modeling_deepseek.DeepseekV3ForCausalLM", "bos_token_id", c->bos_token_id, "eos_token_id",
        c->eos_token_id, "ep_size", 1, "first_k_dense_replace", c->first_k_dense_replace,
        "hidden_act", "silu", "hidden_size", c->hidden_size, "initializer_range", 0.02,
        "intermediate_size", c->intermediate_size, "kv_lora_rank", c->kv_lora_rank,
        "max_position_embeddings", c->max_position_embeddings, "model_type", "deepseek_v3",
        "moe_intermediate_size", c->moe_intermediate_size, "moe_layer_freq", c->moe_layer_freq,
        "n_group", c->n_group, "n_routed_experts", c->n_routed_experts, "n_shared_experts",
        c->n_shared_experts, "norm_topk_prob", c->norm_topk_prob, "num_attention_heads",
        c->num_attention_heads, "num_experts_per_tok", c->num_experts_per_tok, "num_hidden_layers",
        c->num_hidden_layers, "num_key_value_heads", c->num_attention_heads,
        "num_nextn_predict_layers", c->num_nextn_predict_layers, "q_lora_rank", c->q_lora_rank);
    if (!o) return dsr1_error(DSR1_ERR_NOMEM, "config.json: out of memory");
    if (c->q_lora_rank == 0) json_object_set_new(o, "q_lora_rank", json_null());
    json_object_set_new(o, "qk_nope_head_dim", json_integer(c->qk_nope_head_dim));
    json_object_set_new(o, "qk_rope_head_dim", json_integer(c->qk_rope_head_dim));
    if (c->fp8)
        json_object_set_new(o, "quantization_config",
                            json_pack("{s:s, s:s, s:s, s:[i, i]}", "activation_scheme", "dynamic",
                                      "fmt", "e4m3", "quant_method", "fp8", "weight_block_size",
                                      c->weight_block[0], c->weight_block[1]));
    json_object_set_new(o, "rms_norm_eps", json_float(c->rms_norm_eps));
    json_t *rs = json_null();
    if (c->rope_type == DSR1_ROPE_YARN) {
        rs = json_object();
        json_object_set_new(rs, "beta_fast", json_num(c->rope_beta_fast));
        json_object_set_new(rs, "beta_slow", json_num(c->rope_beta_slow));
        json_object_set_new(rs, "factor", json_num(c->rope_factor));
        json_object_set_new(rs, "mscale", json_real(c->rope_mscale));
        json_object_set_new(rs, "mscale_all_dim", json_real(c->rope_mscale_all_dim));
        json_object_set_new(rs, "original_max_position_embeddings",
                            json_integer(c->rope_original_max_position_embeddings));
        json_object_set_new(rs, "type", json_string("yarn"));
    }
    json_object_set_new(o, "rope_scaling", rs);
    json_object_set_new(o, "rope_theta", json_num(c->rope_theta));
    json_object_set_new(o, "routed_scaling_factor", json_float(c->routed_scaling_factor));
    json_object_set_new(o, "scoring_func", json_string("sigmoid"));
    json_object_set_new(o, "tie_word_embeddings", json_boolean(c->tie_word_embeddings));
    json_object_set_new(o, "topk_group", json_integer(c->topk_group));
    json_object_set_new(o, "topk_method", json_string("noaux_tc"));
    json_object_set_new(o, "torch_dtype", json_string("bfloat16"));
    json_object_set_new(o, "transformers_version", json_string("4.46.3"));
    json_object_set_new(o, "use_cache", json_true());
    json_object_set_new(o, "v_head_dim", json_integer(c->v_head_dim));
    json_object_set_new(o, "vocab_size", json_integer(c->vocab_size));
    char *s = json_dumps(o, JSON_FLAGS);
    json_decref(o);
    if (!s) return dsr1_error(DSR1_ERR_NOMEM, "config.json: out of memory");
    *out = s;
    return DSR1_OK;
}

static dsr1_status write_text(const char *dir, const char *name, const char *text)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) return dsr1_error(DSR1_ERR_IO, "%s: cannot create", path);
    size_t n = strlen(text);
    int bad = fwrite(text, 1, n, f) != n || (n && text[n - 1] != '\n' && fputc('\n', f) == EOF);
    if (fclose(f) != 0 || bad) return dsr1_error(DSR1_ERR_IO, "%s: write failed", path);
    return DSR1_OK;
}

static dsr1_status write_json(const char *dir, const char *name, json_t *o)
{
    if (!o) return dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory", name);
    char *s = json_dumps(o, JSON_FLAGS);
    json_decref(o);
    if (!s) return dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory", name);
    dsr1_status st = write_text(dir, name, s);
    free(s);
    return st;
}

/* ---- the pipeline ---- */

static void fill_piece(job *j, const piece *pc, uint8_t *buf)
{
    const dsr1_tensor_spec *t = &j->plan->t[pc->tensor];
    if (t->init == DSR1_INIT_FP8_WEIGHT) {
        int64_t scols = (t->shape[1] + DSR1_FP8_BLOCK - 1) / DSR1_FP8_BLOCK;
        dsr1_randw_fp8_rows(j->rw, t->stream, t->shape[0], t->shape[1], t->gain, pc->u0, pc->u1,
                            buf, j->scales + j->soff[pc->tensor] + pc->u0 * scols);
    } else if (t->init == DSR1_INIT_NORMAL) {
        dsr1_randw_normal_range(j->rw, t->stream, t->dtype, t->mean, t->std, pc->u0, pc->u1, buf);
    } /* a scale_inv piece is copied from j->scales by the writer */
}

static void *worker_main(void *arg)
{
    job *j = arg;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        size_t p = j->next;
        if (j->stop || p >= j->npieces) break;
        j->next++;
        /* the slot is free once the piece nslots earlier has been written */
        while (!j->stop && p >= j->written + (size_t)j->nslots) pthread_cond_wait(&j->cv, &j->mu);
        if (j->stop) break;
        pthread_mutex_unlock(&j->mu);
        fill_piece(j, &j->pieces[p], j->slots + (p % (size_t)j->nslots) * j->slot_bytes);
        pthread_mutex_lock(&j->mu);
        j->ready[p % (size_t)j->nslots] = (int64_t)p;
        pthread_cond_broadcast(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

/* Split the plan into shards and pieces. shard_first[k] = first tensor of shard k. */
static dsr1_status make_pieces(job *j, int want_shards, int **shard_first, int *nshards)
{
    const dsr1_tensor_plan *pl = j->plan;
    uint64_t per = (pl->total_bytes + (uint64_t)want_shards - 1) / (uint64_t)want_shards;
    int *first = calloc((size_t)want_shards + 1, sizeof(int));
    size_t cap = 1024, n = 0;
    piece *pc = malloc(cap * sizeof(*pc));
    j->soff = calloc(pl->count, sizeof(uint64_t));
    if (!first || !pc || !j->soff) goto nomem;
    uint64_t size = 0, nscale = 0;
    int shard = 0;
    j->slot_bytes = PIECE_BYTES;
    for (size_t i = 0; i < pl->count; i++) {
        const dsr1_tensor_spec *t = &pl->t[i];
        if (size && size + t->nbytes > per && shard < want_shards - 1) {
            first[++shard] = (int)i;
            size = 0;
        }
        size += t->nbytes;
        /* units: block rows of an FP8 weight, elements of a BF16/F32 tensor */
        int64_t units = 1, per_piece = 1;
        uint64_t unit_bytes = t->nbytes; /* scale_inv: one piece, copied by the writer */
        if (t->init == DSR1_INIT_FP8_WEIGHT) {
            int64_t scols = (t->shape[1] + DSR1_FP8_BLOCK - 1) / DSR1_FP8_BLOCK;
            unit_bytes = (uint64_t)DSR1_FP8_BLOCK * (uint64_t)t->shape[1];
            units = (t->shape[0] + DSR1_FP8_BLOCK - 1) / DSR1_FP8_BLOCK;
            per_piece = PIECE_BYTES / unit_bytes ? (int64_t)(PIECE_BYTES / unit_bytes) : 1;
            if (unit_bytes > j->slot_bytes) j->slot_bytes = unit_bytes;
            j->soff[i] = nscale;
            nscale += (uint64_t)(units * scols);
        } else if (t->init == DSR1_INIT_NORMAL) {
            unit_bytes = dsr1_dtype_size(t->dtype);
            units = dsr1_tensor_numel(t);
            per_piece = (int64_t)(PIECE_BYTES / (DSR1_RANDW_CHUNK * unit_bytes)) * DSR1_RANDW_CHUNK;
        }
        for (int64_t u = 0; u < units; u += per_piece) {
            if (n == cap) {
                piece *np = realloc(pc, 2 * cap * sizeof(*pc));
                if (!np) goto nomem;
                pc = np;
                cap *= 2;
            }
            int64_t u1 = u + per_piece < units ? u + per_piece : units;
            uint64_t b = (uint64_t)(u1 - u) * unit_bytes;
            if (t->init == DSR1_INIT_FP8_WEIGHT && u1 == units) /* partial last block row */
                b = (uint64_t)(t->shape[0] - u * DSR1_FP8_BLOCK) * (uint64_t)t->shape[1];
            pc[n++] = (piece){(int)i, shard, u, u1, b};
        }
    }
    first[shard + 1] = (int)pl->count;
    j->scales = malloc((nscale ? nscale : 1) * sizeof(float));
    if (!j->scales) goto nomem;
    j->pieces = pc;
    j->npieces = n;
    *shard_first = first;
    *nshards = shard + 1;
    return DSR1_OK;
nomem:
    free(first);
    free(pc);
    return dsr1_error(DSR1_ERR_NOMEM, "mkmodel: out of memory planning %zu tensors", pl->count);
}

/* Open shard k: declare its tensors and write the header. */
static dsr1_status open_shard(const job *j, const char *dir, int k, int nshards, const int *first,
                              dsr1_st_writer **out)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/model-%05d-of-%05d.safetensors", dir, k + 1, nshards);
    dsr1_st_writer *w;
    dsr1_status st = dsr1_st_writer_open(path, &w);
    if (st != DSR1_OK) return st;
    for (int i = first[k]; i < first[k + 1] && st == DSR1_OK; i++) {
        const dsr1_tensor_spec *t = &j->plan->t[i];
        st = dsr1_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape);
    }
    if (st == DSR1_OK) st = dsr1_st_writer_begin(w);
    if (st != DSR1_OK) {
        dsr1_st_writer_abort(w);
        return st;
    }
    *out = w;
    return DSR1_OK;
}

/* The calling thread's part: write pieces in order as the workers finish them. */
static dsr1_status write_pieces(job *j, const char *dir, int nshards, const int *first,
                                dsr1_progress *prog, uint64_t *file_bytes)
{
    dsr1_status st = DSR1_OK;
    dsr1_st_writer *w = NULL;
    int shard = -1;
    for (size_t p = 0; p < j->npieces && st == DSR1_OK; p++) {
        const piece *pc = &j->pieces[p];
        if (pc->shard != shard) {
            if (w) {
                *file_bytes += dsr1_st_writer_header_bytes(w) + dsr1_st_writer_data_bytes(w);
                st = dsr1_st_writer_finish(w);
                w = NULL;
                dsr1_progress_add(prog, 0, 1);
                if (st != DSR1_OK) break;
            }
            shard = pc->shard;
            st = open_shard(j, dir, shard, nshards, first, &w);
            if (st != DSR1_OK) break;
        }
        size_t slot = p % (size_t)j->nslots;
        pthread_mutex_lock(&j->mu);
        while (j->ready[slot] != (int64_t)p) pthread_cond_wait(&j->cv, &j->mu);
        pthread_mutex_unlock(&j->mu);
        const dsr1_tensor_spec *t = &j->plan->t[pc->tensor];
        const void *data = j->slots + slot * j->slot_bytes;
        if (t->init == DSR1_INIT_FP8_SCALE) data = j->scales + j->soff[t->companion];
        st = dsr1_st_writer_write(w, data, pc->bytes);
        dsr1_progress_add(prog, pc->bytes, 0);
        pthread_mutex_lock(&j->mu);
        j->written = p + 1;
        pthread_cond_broadcast(&j->cv);
        pthread_mutex_unlock(&j->mu);
    }
    if (w && st == DSR1_OK) {
        *file_bytes += dsr1_st_writer_header_bytes(w) + dsr1_st_writer_data_bytes(w);
        st = dsr1_st_writer_finish(w);
        dsr1_progress_add(prog, 0, 1);
    } else if (w) {
        dsr1_st_writer_abort(w);
    }
    return st;
}

static dsr1_status thread_count(int want, int *out)
{
    if (want > 0) {
        *out = want;
        return DSR1_OK;
    }
    const char *env = getenv("DSR1_THREADS");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end || v < 1 || v > 4096)
            return dsr1_error(DSR1_ERR_INVALID_ARG, "DSR1_THREADS='%s': expected 1..4096", env);
        *out = (int)v;
        return DSR1_OK;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    *out = n > 0 ? (int)n : 1;
    return DSR1_OK;
}

static dsr1_status write_index(const job *j, const char *dir, int nshards, const int *first)
{
    json_t *map = json_object();
    json_t *o = json_pack("{s:{s:I}, s:o}", "metadata", "total_size",
                          (json_int_t)j->plan->total_bytes, "weight_map", map);
    if (!o) return dsr1_error(DSR1_ERR_NOMEM, "index: out of memory");
    for (int k = 0; k < nshards; k++) {
        char fn[64];
        snprintf(fn, sizeof(fn), "model-%05d-of-%05d.safetensors", k + 1, nshards);
        for (int i = first[k]; i < first[k + 1]; i++)
            if (json_object_set_new(map, j->plan->t[i].name, json_string(fn))) {
                json_decref(o);
                return dsr1_error(DSR1_ERR_NOMEM, "index: out of memory");
            }
    }
    return write_json(dir, "model.safetensors.index.json", o);
}

static dsr1_status run_job(job *j, const dsr1_mkmodel_params *p, int nthreads, int nshards,
                           const int *first, dsr1_progress *prog, uint64_t *file_bytes)
{
    pthread_t *th = calloc((size_t)nthreads, sizeof(*th));
    j->nslots = 2 * nthreads + 2;
    j->ready = malloc((size_t)j->nslots * sizeof(int64_t));
    j->slots = malloc((size_t)j->nslots * j->slot_bytes);
    if (!th || !j->ready || !j->slots) {
        free(th);
        return dsr1_error(DSR1_ERR_NOMEM, "mkmodel: out of memory for %d buffers of %zu bytes",
                          j->nslots, j->slot_bytes);
    }
    for (int i = 0; i < j->nslots; i++) j->ready[i] = -1;
    int started = 0;
    for (; started < nthreads; started++)
        if (pthread_create(&th[started], NULL, worker_main, j) != 0) break;
    dsr1_status st = DSR1_OK;
    if (started == 0) st = dsr1_error(DSR1_ERR_INTERNAL, "mkmodel: cannot start threads");
    if (st == DSR1_OK) st = write_pieces(j, p->out_dir, nshards, first, prog, file_bytes);
    pthread_mutex_lock(&j->mu);
    j->stop = true;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    free(th);
    return st;
}

dsr1_status dsr1_mkmodel_write(const dsr1_mkmodel_params *p, dsr1_mkmodel_result *out)
{
    const dsr1_model_config *c = p->cfg;
    if (!c->fp8 || c->weight_block[0] != DSR1_FP8_BLOCK || c->weight_block[1] != DSR1_FP8_BLOCK)
        return dsr1_error(DSR1_ERR_UNSUPPORTED,
                          "mkmodel writes FP8 checkpoints with 128x128 blocks only; the config "
                          "needs quantization_config {fmt e4m3, weight_block_size [128, 128]}");
    if (p->shards < 1)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "shards must be >= 1, not %d", p->shards);
    int nthreads = 1;
    dsr1_status st = thread_count(p->threads, &nthreads);
    if (st != DSR1_OK) return st;
    double t0 = dsr1_now();
    if (p->tokenizer_dir) { /* first: a tokenizer problem should not cost a whole run */
        st = dsr1_mkmodel_tokenizer(p->tokenizer_dir, p->out_dir);
        if (st != DSR1_OK) return st;
    }

    dsr1_tensor_plan plan;
    st = dsr1_tensor_plan_build(c, &plan);
    if (st != DSR1_OK) return st;
    dsr1_randw rw;
    dsr1_randw_init(&rw, p->seed);
    job j = {.plan = &plan, .rw = &rw};
    pthread_mutex_init(&j.mu, NULL);
    pthread_cond_init(&j.cv, NULL);
    int *first = NULL, nshards = 0;
    uint64_t file_bytes = 0;
    st = make_pieces(&j, p->shards, &first, &nshards);
    if (st == DSR1_OK) {
        dsr1_progress prog;
        dsr1_progress_begin(&prog, "writing", plan.total_bytes, nshards);
        if (!p->progress) prog.quiet = true;
        st = run_job(&j, p, nthreads, nshards, first, &prog, &file_bytes);
        if (st == DSR1_OK) dsr1_progress_end(&prog);
    }
    if (st == DSR1_OK) st = write_index(&j, p->out_dir, nshards, first);
    if (st == DSR1_OK)
        st = write_json(p->out_dir, "generation_config.json",
                        json_pack("{s:i, s:i, s:b, s:f, s:f}", "bos_token_id", c->bos_token_id,
                                  "eos_token_id", c->eos_token_id, "do_sample", 1, "temperature",
                                  0.6, "top_p", 0.95));
    if (st == DSR1_OK) { /* last: a directory without config.json is visibly incomplete */
        char *cj = NULL;
        if (!p->config_json) st = dsr1_mkmodel_config_json(c, &cj);
        if (st == DSR1_OK) st = write_text(p->out_dir, "config.json", cj ? cj : p->config_json);
        free(cj);
    }
    if (st == DSR1_OK) {
        *out = (dsr1_mkmodel_result){.tensors = plan.count,
                                     .shards = nshards,
                                     .tensor_bytes = plan.total_bytes,
                                     .file_bytes = file_bytes,
                                     .seconds = dsr1_now() - t0};
    }
    free(first);
    free(j.pieces);
    free(j.scales);
    free(j.soff);
    free(j.slots);
    free(j.ready);
    pthread_mutex_destroy(&j.mu);
    pthread_cond_destroy(&j.cv);
    dsr1_tensor_plan_free(&plan);
    return st;
}
