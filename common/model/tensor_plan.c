/* The tensor plan of a DeepSeek-V3/R1 checkpoint (see tensor_plan.h).
 *
 * The walk below is the single description of the layout; building the array, counting
 * parameters and generating weights all go through it, so they cannot disagree. */
#include "tensor_plan.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Magnitudes (mirroring the golden generator, so logits of random models are well-scaled). */
#define NORM_MEAN   1.0f
#define NORM_STD    0.1f
#define BIAS_STD    0.05f
#define EMBED_STD   1.0f
#define LINEAR_GAIN 1.0f

typedef struct {
    const dsr1_model_config *cfg;
    dsr1_tensor_plan_fn fn;
    void *arg;
    size_t index;
    dsr1_status st;
    dsr1_tensor_spec t; /* scratch for the entry being emitted */
} walker;

/* Names are built in buffers longer than any entry; emit() rejects what does not fit. */
#define NAMEBUF 160

static void fmtname(char *buf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, NAMEBUF, fmt, ap);
    va_end(ap);
}

const char *dsr1_tensor_kind_name(dsr1_tensor_kind k)
{
    static const char *const names[DSR1_TK_COUNT] = {"embed",         "head",          "norm",
                                                     "attn",          "dense_ffn",     "router",
                                                     "routed_expert", "shared_expert", "mtp_extra"};
    return (unsigned)k < DSR1_TK_COUNT ? names[k] : "?";
}

static size_t dtype_bytes(dsr1_dtype dt)
{
    return dt == DSR1_DT_F32 ? 4 : dt == DSR1_DT_BF16 ? 2 : 1;
}

/* Fill the common fields of w->t and hand it to the callback. */
static void emit(walker *w, const char *name, dsr1_dtype dt, int ndim, int64_t d0, int64_t d1,
                 int layer, int expert, dsr1_tensor_kind kind)
{
    if (w->st != DSR1_OK) return;
    dsr1_tensor_spec *t = &w->t;
    int n = snprintf(t->name, sizeof(t->name), "%s", name);
    if (n < 0 || (size_t)n >= sizeof(t->name)) {
        w->st = dsr1_error(DSR1_ERR_INTERNAL, "tensor name too long: %s", name);
        return;
    }
    if (!t->stream[0]) memcpy(t->stream, t->name, sizeof(t->name));
    t->dtype = dt;
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim == 2 ? d1 : 0;
    t->nbytes = (uint64_t)dsr1_tensor_numel(t) * dtype_bytes(dt);
    t->layer = layer;
    t->expert = expert;
    t->kind = kind;
    t->mtp = layer >= w->cfg->num_hidden_layers;
    w->st = w->fn(t, w->index++, w->arg);
    memset(t, 0, sizeof(*t));
}

static void emit_normal(walker *w, const char *name, dsr1_dtype dt, int ndim, int64_t d0,
                        int64_t d1, float mean, float std, int layer, dsr1_tensor_kind kind)
{
    w->t.init = DSR1_INIT_NORMAL;
    w->t.mean = mean;
    w->t.std = std;
    w->t.companion = -1;
    emit(w, name, dt, ndim, d0, d1, layer, -1, kind);
}

static void emit_norm(walker *w, const char *name, int64_t n, int layer, dsr1_tensor_kind kind)
{
    emit_normal(w, name, DSR1_DT_BF16, 1, n, 0, NORM_MEAN, NORM_STD, layer, kind);
}

/* An FP8 linear `prefix`.weight [out, in] and its scale_inv. */
static void emit_linear(walker *w, const char *prefix, int64_t out, int64_t in, int layer,
                        int expert, dsr1_tensor_kind kind)
{
    char name[NAMEBUF];
    fmtname(name, "%s.weight", prefix);
    w->t.init = DSR1_INIT_FP8_WEIGHT;
    w->t.gain = LINEAR_GAIN;
    w->t.companion = (int)w->index + 1;
    emit(w, name, DSR1_DT_F8_E4M3, 2, out, in, layer, expert, kind);
    fmtname(name, "%s.weight_scale_inv", prefix);
    w->t.init = DSR1_INIT_FP8_SCALE;
    w->t.companion = (int)w->index - 1;
    emit(w, name, DSR1_DT_F32, 2, (out + DSR1_FP8_BLOCK - 1) / DSR1_FP8_BLOCK,
         (in + DSR1_FP8_BLOCK - 1) / DSR1_FP8_BLOCK, layer, expert, kind);
}

static void emit_mlp(walker *w, const char *prefix, int64_t inter, int layer, int expert,
                     dsr1_tensor_kind kind)
{
    static const char *const parts[3] = {"gate_proj", "up_proj", "down_proj"};
    int64_t d = w->cfg->hidden_size;
    char name[NAMEBUF];
    for (int i = 0; i < 3; i++) {
        fmtname(name, "%s.%s", prefix, parts[i]);
        if (i < 2)
            emit_linear(w, name, inter, d, layer, expert, kind);
        else
            emit_linear(w, name, d, inter, layer, expert, kind);
    }
}

static void emit_layer(walker *w, int i)
{
    const dsr1_model_config *c = w->cfg;
    int64_t d = c->hidden_size, nh = c->num_attention_heads;
    int64_t qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    char p[NAMEBUF], n[NAMEBUF];
    fmtname(p, "model.layers.%d", i);

    fmtname(n, "%s.input_layernorm.weight", p);
    emit_norm(w, n, d, i, DSR1_TK_NORM);
    fmtname(n, "%s.post_attention_layernorm.weight", p);
    emit_norm(w, n, d, i, DSR1_TK_NORM);

    if (c->q_lora_rank > 0) {
        fmtname(n, "%s.self_attn.q_a_proj", p);
        emit_linear(w, n, c->q_lora_rank, d, i, -1, DSR1_TK_ATTN);
        fmtname(n, "%s.self_attn.q_a_layernorm.weight", p);
        emit_norm(w, n, c->q_lora_rank, i, DSR1_TK_NORM);
        fmtname(n, "%s.self_attn.q_b_proj", p);
        emit_linear(w, n, nh * qk, c->q_lora_rank, i, -1, DSR1_TK_ATTN);
    } else {
        fmtname(n, "%s.self_attn.q_proj", p);
        emit_linear(w, n, nh * qk, d, i, -1, DSR1_TK_ATTN);
    }
    fmtname(n, "%s.self_attn.kv_a_proj_with_mqa", p);
    emit_linear(w, n, c->kv_lora_rank + c->qk_rope_head_dim, d, i, -1, DSR1_TK_ATTN);
    fmtname(n, "%s.self_attn.kv_a_layernorm.weight", p);
    emit_norm(w, n, c->kv_lora_rank, i, DSR1_TK_NORM);
    fmtname(n, "%s.self_attn.kv_b_proj", p);
    emit_linear(w, n, nh * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank, i, -1,
                DSR1_TK_ATTN);
    fmtname(n, "%s.self_attn.o_proj", p);
    emit_linear(w, n, d, nh * c->v_head_dim, i, -1, DSR1_TK_ATTN);

    if (!dsr1_cfg_is_moe_layer(c, i)) {
        fmtname(n, "%s.mlp", p);
        emit_mlp(w, n, c->intermediate_size, i, -1, DSR1_TK_DENSE_FFN);
        return;
    }
    fmtname(n, "%s.mlp.gate.weight", p);
    emit_normal(w, n, DSR1_DT_BF16, 2, c->n_routed_experts, d, 0.0f, 1.0f / sqrtf((float)d), i,
                DSR1_TK_ROUTER);
    fmtname(n, "%s.mlp.gate.e_score_correction_bias", p);
    emit_normal(w, n, DSR1_DT_F32, 1, c->n_routed_experts, 0, 0.0f, BIAS_STD, i, DSR1_TK_ROUTER);
    for (int e = 0; e < c->n_routed_experts && w->st == DSR1_OK; e++) {
        fmtname(n, "%s.mlp.experts.%d", p, e);
        emit_mlp(w, n, c->moe_intermediate_size, i, e, DSR1_TK_ROUTED_EXPERT);
    }
    if (c->n_shared_experts > 0) {
        fmtname(n, "%s.mlp.shared_experts", p);
        emit_mlp(w, n, (int64_t)c->moe_intermediate_size * c->n_shared_experts, i, -1,
                 DSR1_TK_SHARED_EXPERT);
    }
}

static void emit_mtp_extra(walker *w, int i)
{
    int64_t d = w->cfg->hidden_size, vocab = w->cfg->vocab_size;
    char n[NAMEBUF];
    fmtname(n, "model.layers.%d.enorm.weight", i);
    emit_norm(w, n, d, i, DSR1_TK_MTP_EXTRA);
    fmtname(n, "model.layers.%d.hnorm.weight", i);
    emit_norm(w, n, d, i, DSR1_TK_MTP_EXTRA);
    fmtname(n, "model.layers.%d.eh_proj.weight", i);
    emit_normal(w, n, DSR1_DT_BF16, 2, d, 2 * d, 0.0f, 1.0f / sqrtf(2.0f * (float)d), i,
                DSR1_TK_MTP_EXTRA);
    fmtname(n, "model.layers.%d.shared_head.norm.weight", i);
    emit_norm(w, n, d, i, DSR1_TK_MTP_EXTRA);
    /* the MTP module shares the main output head and embedding; stored again, same values */
    snprintf(w->t.stream, sizeof(w->t.stream), "lm_head.weight");
    fmtname(n, "model.layers.%d.shared_head.head.weight", i);
    emit_normal(w, n, DSR1_DT_BF16, 2, vocab, d, 0.0f, 1.0f / sqrtf((float)d), i,
                DSR1_TK_MTP_EXTRA);
    snprintf(w->t.stream, sizeof(w->t.stream), "model.embed_tokens.weight");
    fmtname(n, "model.layers.%d.embed_tokens.weight", i);
    emit_normal(w, n, DSR1_DT_BF16, 2, vocab, d, 0.0f, EMBED_STD, i, DSR1_TK_MTP_EXTRA);
}

/* Everything the walk relies on; one message listing every problem. */
static dsr1_status check_config(const dsr1_model_config *c)
{
    char msg[1024];
    size_t len = 0;
#define NEED(cond, ...)                                                                            \
    do {                                                                                           \
        if (!(cond) && len < sizeof(msg))                                                          \
            len += (size_t)snprintf(msg + len, sizeof(msg) - len, __VA_ARGS__);                    \
    } while (0)
    bool moe = c->first_k_dense_replace < c->num_hidden_layers + c->num_nextn_predict_layers;
    bool dense = c->first_k_dense_replace > 0;
    NEED(c->hidden_size > 0, "\n  hidden_size must be > 0");
    NEED(c->vocab_size > 0, "\n  vocab_size must be > 0");
    NEED(c->num_hidden_layers > 0, "\n  num_hidden_layers must be > 0");
    NEED(c->num_nextn_predict_layers >= 0, "\n  num_nextn_predict_layers must be >= 0");
    NEED(c->first_k_dense_replace >= 0, "\n  first_k_dense_replace must be >= 0");
    NEED(c->num_attention_heads > 0, "\n  num_attention_heads must be > 0");
    NEED(c->q_lora_rank >= 0, "\n  q_lora_rank must be >= 0");
    NEED(c->kv_lora_rank > 0, "\n  kv_lora_rank must be > 0");
    NEED(c->qk_nope_head_dim >= 0, "\n  qk_nope_head_dim must be >= 0");
    NEED(c->qk_rope_head_dim > 0, "\n  qk_rope_head_dim must be > 0");
    NEED(c->v_head_dim > 0, "\n  v_head_dim must be > 0");
    NEED(!dense || c->intermediate_size > 0, "\n  intermediate_size must be > 0");
    NEED(!moe || c->n_routed_experts > 0, "\n  n_routed_experts must be > 0");
    NEED(!moe || c->moe_intermediate_size > 0, "\n  moe_intermediate_size must be > 0");
    NEED(c->n_shared_experts >= 0, "\n  n_shared_experts must be >= 0");
#undef NEED
    if (len) return dsr1_error(DSR1_ERR_INVALID_ARG, "model config cannot be planned:%s", msg);
    return DSR1_OK;
}

dsr1_status dsr1_tensor_plan_each(const dsr1_model_config *cfg, dsr1_tensor_plan_fn fn, void *arg)
{
    dsr1_status st = check_config(cfg);
    if (st != DSR1_OK) return st;
    walker *w = calloc(1, sizeof(*w));
    if (!w) return dsr1_error(DSR1_ERR_NOMEM, "tensor plan: out of memory");
    w->cfg = cfg;
    w->fn = fn;
    w->arg = arg;
    int64_t d = cfg->hidden_size;

    emit_normal(w, "model.embed_tokens.weight", DSR1_DT_BF16, 2, cfg->vocab_size, d, 0.0f,
                EMBED_STD, -1, DSR1_TK_EMBED);
    for (int i = 0; i < cfg->num_hidden_layers && w->st == DSR1_OK; i++) emit_layer(w, i);
    emit_norm(w, "model.norm.weight", d, -1, DSR1_TK_NORM);
    emit_normal(w, "lm_head.weight", DSR1_DT_BF16, 2, cfg->vocab_size, d, 0.0f,
                1.0f / sqrtf((float)d), -1, DSR1_TK_HEAD);
    for (int k = 0; k < cfg->num_nextn_predict_layers && w->st == DSR1_OK; k++) {
        emit_layer(w, cfg->num_hidden_layers + k);
        emit_mtp_extra(w, cfg->num_hidden_layers + k);
    }
    st = w->st;
    free(w);
    return st;
}

/* ---- the materialised plan ---- */

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

typedef struct {
    dsr1_tensor_plan *p;
    size_t cap;
} builder;

static dsr1_status collect(const dsr1_tensor_spec *t, size_t index, void *arg)
{
    builder *b = arg;
    (void)index;
    if (b->p->count == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 1024;
        dsr1_tensor_spec *n = realloc(b->p->t, cap * sizeof(*n));
        if (!n) return dsr1_error(DSR1_ERR_NOMEM, "tensor plan: out of memory");
        b->p->t = n;
        b->cap = cap;
    }
    b->p->t[b->p->count++] = *t;
    b->p->total_bytes += t->nbytes;
    return DSR1_OK;
}

dsr1_status dsr1_tensor_plan_build(const dsr1_model_config *cfg, dsr1_tensor_plan *out)
{
    dsr1_tensor_plan p = {0};
    builder b = {&p, 0};
    dsr1_status st = dsr1_tensor_plan_each(cfg, collect, &b);
    if (st != DSR1_OK) goto err;
    p.nslots = 16;
    while (p.nslots < 2 * p.count) p.nslots *= 2;
    p.slots = malloc(p.nslots * sizeof(*p.slots));
    if (!p.slots) {
        st = dsr1_error(DSR1_ERR_NOMEM, "tensor plan: out of memory");
        goto err;
    }
    memset(p.slots, 0xff, p.nslots * sizeof(*p.slots));
    for (size_t i = 0; i < p.count; i++) {
        size_t s = name_hash(p.t[i].name) & (p.nslots - 1);
        while (p.slots[s] >= 0) s = (s + 1) & (p.nslots - 1);
        p.slots[s] = (int32_t)i;
    }
    *out = p;
    return DSR1_OK;
err:
    free(p.t);
    return st;
}

void dsr1_tensor_plan_free(dsr1_tensor_plan *plan)
{
    if (!plan) return;
    free(plan->t);
    free(plan->slots);
    memset(plan, 0, sizeof(*plan));
}

const dsr1_tensor_spec *dsr1_tensor_plan_find(const dsr1_tensor_plan *plan, const char *name)
{
    if (!plan->nslots) return NULL;
    size_t s = name_hash(name) & (plan->nslots - 1);
    for (; plan->slots[s] >= 0; s = (s + 1) & (plan->nslots - 1))
        if (!strcmp(plan->t[plan->slots[s]].name, name)) return &plan->t[plan->slots[s]];
    return NULL;
}

/* ---- names ---- */

/* Parse the decimal index after `prefix` in `s`; it must be followed by '.'. */
static dsr1_status parse_index(const char *name, const char *at, const char *what, int *out)
{
    const char *p = at;
    long v = 0;
    if (*p < '0' || *p > '9') goto bad;
    for (; *p >= '0' && *p <= '9'; p++) {
        v = v * 10 + (*p - '0');
        if (v > 1000000) goto bad;
    }
    if (*p != '.') goto bad;
    *out = (int)v;
    return DSR1_OK;
bad:
    return dsr1_error(DSR1_ERR_FORMAT, "tensor name '%s': expected a %s index and a '.' at '%s'",
                      name, what, at);
}

dsr1_status dsr1_tensor_name_parse(const char *name, int *layer, int *expert)
{
    static const char lp[] = "model.layers.", ep[] = ".mlp.experts.";
    int l = -1, e = -1;
    if (!strncmp(name, lp, sizeof(lp) - 1)) {
        const char *at = name + sizeof(lp) - 1;
        dsr1_status st = parse_index(name, at, "layer", &l);
        if (st != DSR1_OK) return st;
        const char *x = strstr(at, ep);
        if (x) {
            st = parse_index(name, x + sizeof(ep) - 1, "expert", &e);
            if (st != DSR1_OK) return st;
        }
    }
    *layer = l;
    *expert = e;
    return DSR1_OK;
}
