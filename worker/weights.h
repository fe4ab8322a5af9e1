/* The weights one worker holds: the slice of the model it owns.
 *
 * A slice names a range of main layers (a pipeline stage) and the routed experts the
 * worker owns; attention, dense FFN, router and shared expert of its layers are always
 * held (replicated across expert-parallel ranks). The embedding is held by the stage that
 * starts at layer 0, the final norm and LM head by the stage that ends at the last layer.
 * The MTP layers of the checkpoint are never loaded.
 *
 * Large tensors stay in their checkpoint format, mapped from the files (FP8 weights keep
 * one byte per weight plus block scales); only small vectors (norms, router bias) are
 * converted to float32 copies owned by the weights object. */
#ifndef DSR1_WEIGHTS_H
#define DSR1_WEIGHTS_H

#include <stdbool.h>
#include <stdint.h>

#include "ckpt.h"
#include "kernels.h"
#include "model_config.h"
#include "tensor_plan.h"

typedef struct {
    int layer_begin, layer_end; /* main layers [begin, end); end <= num_hidden_layers */
    int n_experts;              /* routed experts owned; -1: all of them */
    const int *experts;         /* n_experts ids (copied by the loader) */
} dsr1_slice;

/* The whole model on one worker. */
static inline dsr1_slice dsr1_slice_all(const dsr1_model_config *cfg)
{
    dsr1_slice s = {0, cfg->num_hidden_layers, -1, 0};
    return s;
}

typedef struct {
    dsr1_linear gate, up, down;
} dsr1_ffn_weights;

typedef struct {
    float *attn_norm, *ffn_norm; /* [hidden] */
    /* attention */
    dsr1_linear q_a, q_b; /* q_lora_rank > 0 */
    float *q_a_norm;      /* [q_lora_rank] */
    dsr1_linear q;        /* q_lora_rank == 0 */
    dsr1_linear kv_a;     /* [kv_lora + rope, hidden] */
    float *kv_a_norm;     /* [kv_lora] */
    dsr1_linear kv_b;     /* [heads * (nope + v), kv_lora] */
    dsr1_linear o;        /* [hidden, heads * v] */
    /* FFN */
    bool moe;
    dsr1_ffn_weights dense;    /* dense layers */
    dsr1_linear router;        /* [n_routed_experts, hidden] bf16 */
    float *router_bias;        /* [n_routed_experts] e_score_correction_bias */
    dsr1_ffn_weights shared;   /* shared experts (width moe_intermediate * n_shared) */
    dsr1_ffn_weights *experts; /* [n_routed_experts]; data NULL where not owned */
} dsr1_layer_weights;

typedef struct dsr1_weights {
    dsr1_model_config cfg;
    int layer_begin, layer_end;
    bool *expert_owned; /* [n_routed_experts] */
    int n_owned;
    dsr1_linear embed;               /* [vocab, hidden] bf16, when layer_begin == 0 */
    dsr1_linear head;                /* [vocab, hidden], when layer_end == num_hidden_layers */
    float *final_norm;               /* [hidden], with head */
    dsr1_layer_weights *layers;      /* indexed by absolute layer; only [begin, end) filled */
    dsr1_ckpt_map *map;              /* owned: mapped checkpoint tensors */
    struct dsr1_dummy_tensor *dummy; /* owned: random tensors of --dummy-weights, indexed */
    size_t n_dummy;                  /* like dummy_plan's entries (data NULL: not held) */
    dsr1_tensor_plan *dummy_plan;
    uint64_t bytes; /* tensor bytes held */
} dsr1_weights;

/* Map the slice's tensors from an open checkpoint. The checkpoint must stay open while
 * the weights are alive. */
dsr1_status dsr1_weights_load(const dsr1_ckpt *ck, const dsr1_slice *slice, dsr1_weights **out);
void dsr1_weights_destroy(dsr1_weights *w);

/* Bytes of weights one decode token reads at batch 1: everything held except the
 * embedding (one row) and the routed experts, plus num_experts_per_tok experts per MoE
 * layer. The bandwidth roofline of decode is DRAM bandwidth / this. */
uint64_t dsr1_weights_active_bytes(const dsr1_weights *w);

/* Random weights made in memory from a config alone (no files), for benchmarking real
 * shapes: the tensors of the slice, filled as `dsr1 mkmodel` would with `seed`. */
dsr1_status dsr1_weights_dummy(const dsr1_model_config *cfg, const dsr1_slice *slice, uint64_t seed,
                               dsr1_weights **out);

/* Internal to the loaders: allocate the object for a slice, then (after its tensor source
 * is set) resolve and check every tensor. */
dsr1_status dsr1__weights_begin(const dsr1_model_config *cfg, const dsr1_slice *slice,
                                dsr1_weights **out);
dsr1_status dsr1__weights_finish(dsr1_weights *w);

struct dsr1_dummy_tensor {
    dsr1_st_tensor desc; /* name points into the plan */
    void *data;          /* owned; NULL when the slice does not hold the tensor */
};

/* True when the checkpoint tensor `name` belongs to the slice (used for mapping and for
 * memory reports). */
bool dsr1_slice_wants(const dsr1_model_config *cfg, const dsr1_slice *slice, const char *name);

#endif
