/* The tensor plan: every tensor a DeepSeek-V3/R1 checkpoint holds, derived from its config.
 *
 * One place knows the Hugging Face layout (docs/MODEL.md): names, dtypes, shapes, the file
 * order DeepSeek's converter uses, and how each tensor is tagged (layer, routed expert, kind).
 * `dsr1 mkmodel` writes exactly these tensors, `dsr1 inspect` counts and checks them, and the
 * engine's --dummy-weights fills them from randw.h without any file.
 *
 * Order: model.embed_tokens, then each main layer (norms, attention, FFN: dense, or router,
 * routed experts 0..E-1, shared experts), model.norm, lm_head, then each MTP layer (index
 * num_hidden_layers + k: a full decoder layer, then enorm, hnorm, eh_proj, shared_head.norm,
 * shared_head.head, embed_tokens). Every FP8 `*_proj.weight` is followed by its F32
 * `weight_scale_inv` companion [ceil(out/128), ceil(in/128)].
 *
 * Each entry also says how the random generator fills it (init, std, and the name of the
 * random stream: the MTP module's shared_head.head and embed_tokens reuse the streams of
 * lm_head and model.embed_tokens, so they hold the same values, as in the real checkpoint).
 *
 * Ownership: a dsr1_tensor_plan owns its entry array and lookup table; release with
 * dsr1_tensor_plan_free(). Entries are plain data and may be copied. */
#ifndef DSR1_TENSOR_PLAN_H
#define DSR1_TENSOR_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model_config.h"
#include "safetensors.h"
#include "status.h"

#define DSR1_TENSOR_NAME_MAX 96
#define DSR1_FP8_BLOCK       128

typedef enum {
    DSR1_TK_EMBED,         /* model.embed_tokens */
    DSR1_TK_HEAD,          /* lm_head */
    DSR1_TK_NORM,          /* every RMSNorm weight of a decoder layer, and model.norm */
    DSR1_TK_ATTN,          /* MLA projections */
    DSR1_TK_DENSE_FFN,     /* mlp.{gate,up,down}_proj of the first_k_dense_replace layers */
    DSR1_TK_ROUTER,        /* mlp.gate.weight and its e_score_correction_bias */
    DSR1_TK_ROUTED_EXPERT, /* mlp.experts.E.* */
    DSR1_TK_SHARED_EXPERT, /* mlp.shared_experts.* */
    DSR1_TK_MTP_EXTRA,     /* enorm, hnorm, eh_proj, shared_head.*, embed_tokens of MTP */
    DSR1_TK_COUNT
} dsr1_tensor_kind;

/* How randw.h fills a tensor. */
typedef enum {
    DSR1_INIT_FP8_WEIGHT, /* block-quantised normal(0, gain/sqrt(in)), see randw.h */
    DSR1_INIT_FP8_SCALE,  /* produced together with its weight (companion) */
    DSR1_INIT_NORMAL,     /* normal(mean, std) in the tensor's dtype (BF16 or F32) */
} dsr1_init_kind;

typedef struct {
    char name[DSR1_TENSOR_NAME_MAX];
    dsr1_dtype dtype; /* F8_E4M3, BF16 or F32 */
    int ndim;         /* 1 or 2 */
    int64_t shape[2];
    uint64_t nbytes;
    int layer;  /* -1: global (embed, final norm, lm_head) */
    int expert; /* -1: not a routed expert */
    dsr1_tensor_kind kind;
    bool mtp; /* belongs to an MTP layer (layer >= num_hidden_layers) */

    dsr1_init_kind init;
    float mean, std; /* DSR1_INIT_NORMAL */
    float gain;      /* DSR1_INIT_FP8_WEIGHT: std = gain / sqrt(in) before block variation */
    /* name of the random stream (== name except for the MTP copies of embed/head) */
    char stream[DSR1_TENSOR_NAME_MAX];
    /* FP8 weight: index of its scale_inv; scale_inv: index of its weight; else -1 */
    int companion;
} dsr1_tensor_spec;

typedef struct {
    dsr1_tensor_spec *t; /* count entries in file order */
    size_t count;
    uint64_t total_bytes;
    /* open-addressing name -> index table for dsr1_tensor_plan_find() */
    int32_t *slots;
    size_t nslots;
} dsr1_tensor_plan;

/* Build the plan of `cfg`. Fails with DSR1_ERR_INVALID_ARG (and a message naming the field)
 * when the config cannot describe a checkpoint (non-positive sizes, first_k_dense_replace
 * out of range, ...), DSR1_ERR_NOMEM when memory runs out. */
dsr1_status dsr1_tensor_plan_build(const dsr1_model_config *cfg, dsr1_tensor_plan *out);
void dsr1_tensor_plan_free(dsr1_tensor_plan *plan);
/* Entry named `name`, NULL when the plan has none. */
const dsr1_tensor_spec *dsr1_tensor_plan_find(const dsr1_tensor_plan *plan, const char *name);

/* Calls fn once per tensor in plan order (index = position in the plan) without building
 * the array; a non-DSR1_OK return from fn stops the walk and is returned. Config errors as
 * for dsr1_tensor_plan_build(). Uses no heap memory. */
typedef dsr1_status (*dsr1_tensor_plan_fn)(const dsr1_tensor_spec *t, size_t index, void *arg);
dsr1_status dsr1_tensor_plan_each(const dsr1_model_config *cfg, dsr1_tensor_plan_fn fn, void *arg);

/* Layer and routed-expert index a checkpoint name refers to: "model.layers.7.mlp.experts.12.
 * up_proj.weight" -> 7, 12; "model.layers.3.input_layernorm.weight" -> 3, -1; names outside
 * the layers ("lm_head.weight") -> -1, -1. DSR1_ERR_FORMAT when a "model.layers." or
 * ".experts." prefix is not followed by a decimal index and a dot. */
dsr1_status dsr1_tensor_name_parse(const char *name, int *layer, int *expert);

/* Elements of a tensor (product of its shape). */
static inline int64_t dsr1_tensor_numel(const dsr1_tensor_spec *t)
{
    return t->ndim == 1 ? t->shape[0] : t->shape[0] * t->shape[1];
}
/* "embed", "head", "norm", "attn", "dense_ffn", "router", "routed_expert", "shared_expert",
 * "mtp_extra". */
const char *dsr1_tensor_kind_name(dsr1_tensor_kind k);

#endif
