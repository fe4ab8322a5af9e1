/* Loading a worker's slice of the checkpoint (see weights.h). Every tensor is checked
 * against the shape the config implies before the forward pass may touch it. */
#include "weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "numeric.h"

bool dsr1_slice_wants(const dsr1_model_config *cfg, const dsr1_slice *slice, const char *name)
{
    if (!strcmp(name, "model.embed_tokens.weight")) return slice->layer_begin == 0;
    if (!strcmp(name, "lm_head.weight") || !strcmp(name, "model.norm.weight"))
        return slice->layer_end == cfg->num_hidden_layers;
    int layer, expert;
    if (dsr1_tensor_name_parse(name, &layer, &expert) != DSR1_OK || layer < 0) return false;
    if (layer < slice->layer_begin || layer >= slice->layer_end) return false;
    if (expert < 0 || slice->n_experts < 0) return true;
    for (int i = 0; i < slice->n_experts; i++)
        if (slice->experts[i] == expert) return true;
    return false;
}

typedef struct {
    const dsr1_model_config *cfg;
    const dsr1_slice *slice;
} select_arg;

static bool select_tensor(const char *name, void *arg)
{
    select_arg *a = arg;
    return dsr1_slice_wants(a->cfg, a->slice, name);
}

/* A tensor of the slice, from the mapped checkpoint or from the in-memory dummy store. */
static const void *weights_tensor(const dsr1_weights *w, const char *name, const dsr1_st_tensor **t)
{
    if (w->map) return dsr1_ckpt_map_data(w->map, name, t);
    if (!w->dummy_plan) return NULL;
    const dsr1_tensor_spec *spec = dsr1_tensor_plan_find(w->dummy_plan, name);
    if (!spec) return NULL;
    const struct dsr1_dummy_tensor *d = &w->dummy[spec - w->dummy_plan->t];
    *t = &d->desc;
    return d->data;
}

static dsr1_status shape_error(const char *name, const dsr1_st_tensor *t, int rows, int cols)
{
    return dsr1_error(DSR1_ERR_FORMAT,
                      "tensor '%s' has shape [%lld, %lld] (%s) but the config "
                      "implies [%d, %d]",
                      name, (long long)t->shape[0], t->ndim > 1 ? (long long)t->shape[1] : -1LL,
                      dsr1_dtype_name(t->dtype), rows, cols);
}

static uint64_t linear_bytes(const dsr1_linear *l)
{
    if (!l->data) return 0;
    uint64_t n = (uint64_t)l->rows * (uint64_t)l->cols * dsr1_dtype_size(l->dtype);
    if (l->scale)
        n += sizeof(float) * (uint64_t)((l->rows + 127) / 128) * (uint64_t)((l->cols + 127) / 128);
    return n;
}

static uint64_t ffn_bytes(const dsr1_ffn_weights *f)
{
    return linear_bytes(&f->gate) + linear_bytes(&f->up) + linear_bytes(&f->down);
}

/* A linear weight `prefix.weight` [rows, cols]: FP8 with its block scales, or bf16/f32. */
static dsr1_status get_linear(dsr1_weights *w, const char *prefix, int rows, int cols,
                              dsr1_linear *out)
{
    char name[256];
    snprintf(name, sizeof(name), "%s.weight", prefix);
    const dsr1_st_tensor *t;
    const void *data = weights_tensor(w, name, &t);
    if (!data) return dsr1_error(DSR1_ERR_NOT_FOUND, "checkpoint lacks tensor '%s'", name);
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return shape_error(name, t, rows, cols);
    out->dtype = t->dtype;
    out->rows = rows;
    out->cols = cols;
    out->data = data;
    out->scale = NULL;
    if (t->dtype == DSR1_DT_F8_E4M3) {
        const int sr = (rows + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
        const int sc = (cols + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
        snprintf(name, sizeof(name), "%s.weight_scale_inv", prefix);
        const dsr1_st_tensor *s;
        out->scale = weights_tensor(w, name, &s);
        if (!out->scale)
            return dsr1_error(DSR1_ERR_NOT_FOUND,
                              "checkpoint lacks tensor '%s' (the block "
                              "scales of an FP8 weight)",
                              name);
        if (s->dtype != DSR1_DT_F32 || s->ndim != 2 || s->shape[0] != sr || s->shape[1] != sc)
            return dsr1_error(DSR1_ERR_FORMAT,
                              "tensor '%s' must be F32 [%d, %d] (128x128 "
                              "blocks of a [%d, %d] weight)",
                              name, sr, sc, rows, cols);
    } else if (t->dtype != DSR1_DT_BF16 && t->dtype != DSR1_DT_F32) {
        return dsr1_error(DSR1_ERR_UNSUPPORTED,
                          "tensor '%s': dtype %s is not supported for a "
                          "linear weight (F8_E4M3, BF16, F32)",
                          name, dsr1_dtype_name(t->dtype));
    }
    w->bytes += linear_bytes(out);
    return DSR1_OK;
}

/* A 1-D vector of n values (norm weights, router bias), converted to an owned float copy. */
static dsr1_status get_vec(dsr1_weights *w, const char *name, int n, float **out)
{
    const dsr1_st_tensor *t;
    const void *data = weights_tensor(w, name, &t);
    if (!data) return dsr1_error(DSR1_ERR_NOT_FOUND, "checkpoint lacks tensor '%s'", name);
    if (t->ndim != 1 || t->shape[0] != n)
        return dsr1_error(DSR1_ERR_FORMAT, "tensor '%s' must be a vector of %d values", name, n);
    float *v = malloc((size_t)n * sizeof(float));
    if (!v) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        switch (t->dtype) {
        case DSR1_DT_BF16:
            v[i] = dsr1_bf16_to_f32(((const uint16_t *)data)[i]);
            break;
        case DSR1_DT_F16:
            v[i] = dsr1_f16_to_f32(((const uint16_t *)data)[i]);
            break;
        case DSR1_DT_F32:
            memcpy(&v[i], (const uint8_t *)data + 4 * (size_t)i, 4);
            break;
        default:
            free(v);
            return dsr1_error(DSR1_ERR_UNSUPPORTED,
                              "tensor '%s': dtype %s not supported for a "
                              "vector",
                              name, dsr1_dtype_name(t->dtype));
        }
    }
    *out = v;
    w->bytes += t->nbytes;
    return DSR1_OK;
}

static dsr1_status get_ffn(dsr1_weights *w, const char *prefix, int inter, dsr1_ffn_weights *f)
{
    const int d = w->cfg.hidden_size;
    char p[200];
    dsr1_status st;
    snprintf(p, sizeof(p), "%s.gate_proj", prefix);
    if ((st = get_linear(w, p, inter, d, &f->gate)) != DSR1_OK) return st;
    snprintf(p, sizeof(p), "%s.up_proj", prefix);
    if ((st = get_linear(w, p, inter, d, &f->up)) != DSR1_OK) return st;
    snprintf(p, sizeof(p), "%s.down_proj", prefix);
    return get_linear(w, p, d, inter, &f->down);
}

static dsr1_status load_layer(dsr1_weights *w, int l)
{
    const dsr1_model_config *c = &w->cfg;
    dsr1_layer_weights *L = &w->layers[l];
    const int d = c->hidden_size, nh = c->num_attention_heads;
    const int qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    char p[200], n[256];
    dsr1_status st;
#define TRY(x)                                                                                     \
    do {                                                                                           \
        if ((st = (x)) != DSR1_OK) return st;                                                      \
    } while (0)
    snprintf(n, sizeof(n), "model.layers.%d.input_layernorm.weight", l);
    TRY(get_vec(w, n, d, &L->attn_norm));
    snprintf(n, sizeof(n), "model.layers.%d.post_attention_layernorm.weight", l);
    TRY(get_vec(w, n, d, &L->ffn_norm));
    if (c->q_lora_rank > 0) {
        snprintf(p, sizeof(p), "model.layers.%d.self_attn.q_a_proj", l);
        TRY(get_linear(w, p, c->q_lora_rank, d, &L->q_a));
        snprintf(n, sizeof(n), "model.layers.%d.self_attn.q_a_layernorm.weight", l);
        TRY(get_vec(w, n, c->q_lora_rank, &L->q_a_norm));
        snprintf(p, sizeof(p), "model.layers.%d.self_attn.q_b_proj", l);
        TRY(get_linear(w, p, nh * qk, c->q_lora_rank, &L->q_b));
    } else {
        snprintf(p, sizeof(p), "model.layers.%d.self_attn.q_proj", l);
        TRY(get_linear(w, p, nh * qk, d, &L->q));
    }
    snprintf(p, sizeof(p), "model.layers.%d.self_attn.kv_a_proj_with_mqa", l);
    TRY(get_linear(w, p, c->kv_lora_rank + c->qk_rope_head_dim, d, &L->kv_a));
    snprintf(n, sizeof(n), "model.layers.%d.self_attn.kv_a_layernorm.weight", l);
    TRY(get_vec(w, n, c->kv_lora_rank, &L->kv_a_norm));
    snprintf(p, sizeof(p), "model.layers.%d.self_attn.kv_b_proj", l);
    TRY(get_linear(w, p, nh * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank, &L->kv_b));
    snprintf(p, sizeof(p), "model.layers.%d.self_attn.o_proj", l);
    TRY(get_linear(w, p, d, nh * c->v_head_dim, &L->o));

    L->moe = dsr1_cfg_is_moe_layer(c, l);
    if (!L->moe) {
        snprintf(p, sizeof(p), "model.layers.%d.mlp", l);
        return get_ffn(w, p, c->intermediate_size, &L->dense);
    }
    snprintf(p, sizeof(p), "model.layers.%d.mlp.gate", l);
    TRY(get_linear(w, p, c->n_routed_experts, d, &L->router));
    snprintf(n, sizeof(n), "model.layers.%d.mlp.gate.e_score_correction_bias", l);
    TRY(get_vec(w, n, c->n_routed_experts, &L->router_bias));
    snprintf(p, sizeof(p), "model.layers.%d.mlp.shared_experts", l);
    TRY(get_ffn(w, p, c->moe_intermediate_size * c->n_shared_experts, &L->shared));
    L->experts = calloc((size_t)c->n_routed_experts, sizeof(*L->experts));
    if (!L->experts) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    for (int e = 0; e < c->n_routed_experts; e++) {
        if (!w->expert_owned[e]) continue;
        snprintf(p, sizeof(p), "model.layers.%d.mlp.experts.%d", l, e);
        TRY(get_ffn(w, p, c->moe_intermediate_size, &L->experts[e]));
    }
#undef TRY
    return DSR1_OK;
}

static dsr1_status check_slice(const dsr1_model_config *c, const dsr1_slice *s)
{
    if (s->layer_begin < 0 || s->layer_end > c->num_hidden_layers || s->layer_begin >= s->layer_end)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "slice layers [%d, %d) are not a non-empty "
                          "range of the model's %d layers",
                          s->layer_begin, s->layer_end, c->num_hidden_layers);
    for (int i = 0; i < s->n_experts; i++)
        if (s->experts[i] < 0 || s->experts[i] >= c->n_routed_experts)
            return dsr1_error(DSR1_ERR_INVALID_ARG, "slice names expert %d; the model has %d",
                              s->experts[i], c->n_routed_experts);
    return DSR1_OK;
}

dsr1_status dsr1__weights_begin(const dsr1_model_config *c, const dsr1_slice *slice,
                                dsr1_weights **out)
{
    dsr1_status st = check_slice(c, slice);
    if (st != DSR1_OK) return st;
    dsr1_weights *w = calloc(1, sizeof(*w));
    if (!w) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    w->cfg = *c;
    w->layer_begin = slice->layer_begin;
    w->layer_end = slice->layer_end;
    w->layers = calloc((size_t)c->num_hidden_layers, sizeof(*w->layers));
    w->expert_owned = calloc((size_t)c->n_routed_experts, sizeof(bool));
    if (!w->layers || !w->expert_owned) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto err;
    }
    for (int e = 0; e < c->n_routed_experts; e++) w->expert_owned[e] = slice->n_experts < 0;
    for (int i = 0; i < slice->n_experts; i++) w->expert_owned[slice->experts[i]] = true;
    for (int e = 0; e < c->n_routed_experts; e++) w->n_owned += w->expert_owned[e];
    *out = w;
    return DSR1_OK;
err:
    dsr1_weights_destroy(w);
    return st;
}

dsr1_status dsr1__weights_finish(dsr1_weights *w)
{
    const dsr1_model_config *c = &w->cfg;
    dsr1_status st = DSR1_OK;
    if (w->layer_begin == 0 &&
        (st = get_linear(w, "model.embed_tokens", c->vocab_size, c->hidden_size, &w->embed)))
        goto err;
    if (w->layer_end == c->num_hidden_layers) {
        if ((st = get_linear(w, "lm_head", c->vocab_size, c->hidden_size, &w->head))) goto err;
        if ((st = get_vec(w, "model.norm.weight", c->hidden_size, &w->final_norm))) goto err;
    }
    for (int l = w->layer_begin; l < w->layer_end; l++)
        if ((st = load_layer(w, l)) != DSR1_OK) goto err;
    DSR1_INFO("weights: layers [%d, %d), %d/%d routed experts, %.1f MB held", w->layer_begin,
              w->layer_end, w->n_owned, c->n_routed_experts, w->bytes / 1e6);
err:
    return st;
}

dsr1_status dsr1_weights_load(const dsr1_ckpt *ck, const dsr1_slice *slice, dsr1_weights **out)
{
    dsr1_weights *w;
    dsr1_status st = dsr1__weights_begin(dsr1_ckpt_config(ck), slice, &w);
    if (st != DSR1_OK) return st;
    select_arg sa = {&w->cfg, slice};
    if ((st = dsr1_ckpt_map_tensors(ck, select_tensor, &sa, &w->map)) != DSR1_OK ||
        (st = dsr1__weights_finish(w)) != DSR1_OK) {
        dsr1_weights_destroy(w);
        return st;
    }
    *out = w;
    return DSR1_OK;
}

void dsr1_weights_destroy(dsr1_weights *w)
{
    if (!w) return;
    if (w->layers) {
        for (int l = 0; l < w->cfg.num_hidden_layers; l++) {
            dsr1_layer_weights *L = &w->layers[l];
            free(L->attn_norm);
            free(L->ffn_norm);
            free(L->q_a_norm);
            free(L->kv_a_norm);
            free(L->router_bias);
            free(L->experts);
        }
    }
    free(w->layers);
    free(w->final_norm);
    free(w->expert_owned);
    dsr1_ckpt_map_release(w->map);
    for (size_t i = 0; i < w->n_dummy; i++) free(w->dummy[i].data);
    free(w->dummy);
    if (w->dummy_plan) dsr1_tensor_plan_free(w->dummy_plan);
    free(w->dummy_plan);
    free(w);
}

uint64_t dsr1_weights_active_bytes(const dsr1_weights *w)
{
    const dsr1_model_config *c = &w->cfg;
    uint64_t n = linear_bytes(&w->head);
    if (w->embed.data) n += (uint64_t)c->hidden_size * dsr1_dtype_size(w->embed.dtype);
    for (int l = w->layer_begin; l < w->layer_end; l++) {
        const dsr1_layer_weights *L = &w->layers[l];
        n += linear_bytes(&L->q_a) + linear_bytes(&L->q_b) + linear_bytes(&L->q) +
             linear_bytes(&L->kv_a) + linear_bytes(&L->kv_b) + linear_bytes(&L->o);
        if (!L->moe) {
            n += ffn_bytes(&L->dense);
            continue;
        }
        n += linear_bytes(&L->router) + ffn_bytes(&L->shared);
        for (int e = 0; e < c->n_routed_experts; e++)
            if (w->expert_owned[e]) {
                n += ffn_bytes(&L->experts[e]) * (uint64_t)c->num_experts_per_tok /
                     (uint64_t)c->n_routed_experts;
            }
    }
    return n;
}
